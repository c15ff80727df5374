"""Pipeline wiring: create_pipeline and its runners."""
