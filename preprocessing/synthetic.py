"""The embedded default data set's command line: generates synthetic
behaviour and impression logs with a planted long-range signal and writes
them, one CSV per UTC day, with the oracle's AUC in oracle.json.

The world and its click model: preprocessing/synthetic_world.py; the files:
preprocessing/synthetic_writer.py.

Usage:
  python -m preprocessing.synthetic --output_dir=DIR --users=4000 --seed=0
"""

from __future__ import annotations

import dataclasses
import json
import sys

from absl import app
from absl import flags

from preprocessing import environment
from preprocessing import flag_parsing
from preprocessing import synthetic_world
from preprocessing import synthetic_writer


def _define_flags():
  defaults = synthetic_world.SyntheticConfig()
  flags.DEFINE_string("output_dir", None, "Directory to write the logs to.")
  flags.mark_flag_as_required("output_dir")
  for field in dataclasses.fields(synthetic_world.SyntheticConfig):
    default = getattr(defaults, field.name)
    help_text = f"SyntheticConfig.{field.name}."
    if isinstance(default, str):
      flags.DEFINE_string(field.name, default, help_text)
    elif isinstance(default, float):
      flags.DEFINE_float(field.name, default, help_text)
    else:
      flags.DEFINE_integer(field.name, default, help_text)


def main(argv):
  flag_parsing.refuse_arguments(argv)
  environment.check_environment(import_tensorflow=False)
  values = {f.name: flags.FLAGS[f.name].value
            for f in dataclasses.fields(synthetic_world.SyntheticConfig)}
  try:
    config = synthetic_world.SyntheticConfig.from_dict(values)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  try:
    summary = synthetic_writer.generate_to_dir(config, flags.FLAGS.output_dir)
  except (ValueError, OSError) as error:
    # Data too small for its oracle AUC, an unwritable output_dir.
    sys.exit(f"synthetic: error: {error}")
  print(json.dumps({k: v for k, v in summary.items() if k != "config"},
                   indent=2, sort_keys=True))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=flag_parsing.parse_flags)
