"""The run report read back from a real (SQLite) ML Metadata store."""

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline import run_report


def _store(path):
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = path
  return metadata_store.MetadataStore(config)


def _record_run(store, states):
  """One pipeline_run context with one execution per node, in `states`."""
  run_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
  node_type = store.put_context_type(metadata_store_pb2.ContextType(name="node"))
  execution_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="component"))
  [run_id] = store.put_contexts([metadata_store_pb2.Context(type_id=run_type, name="run-1")])
  for node, state in states.items():
    [node_id] = store.put_contexts(
        [metadata_store_pb2.Context(type_id=node_type, name=f"eta-ctr.{node}")])
    execution = metadata_store_pb2.Execution(
        type_id=execution_type,
        last_known_state=metadata_store_pb2.Execution.State.Value(state))
    [execution_id] = store.put_executions([execution])
    store.put_attributions_and_associations(
        [], [metadata_store_pb2.Association(execution_id=execution_id, context_id=c)
             for c in (run_id, node_id)])


def test_a_failed_run_shows_its_unfinished_component_as_failed(tmp_path):
  path = str(tmp_path / "metadata.sqlite")
  _record_run(_store(path), {"ExampleGen": "RUNNING", "ImportSchemaGen": "COMPLETE"})
  failed = run_report.report(path, "eta-ctr", run_failed=True)
  assert failed.states == {"ExampleGen": "FAILED", "ImportSchemaGen": "COMPLETE"}
  assert "ExampleGen=FAILED" in failed.format()
  assert "NOT PUSHED: the run failed at ExampleGen" in failed.format()
  # Without the orchestrator's error (a run still going) MLMD's state stands.
  assert run_report.report(path, "eta-ctr").states["ExampleGen"] == "RUNNING"
