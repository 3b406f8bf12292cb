"""The steps layer: one `run_<step>` per pipeline step, with its input checks, its model card, its tracking (as
callbacks of the training loop) and its outputs; and the experiment protocol (teacher, search, student and its
no-KD control, evaluation, comparison, the winner on validation, registration).

The CLI (`sibeatgan.cli`), the KFP components (`components/`), the bench scripts (`bench/`) and the local pipeline
run (`pipelines/local.py`) are argument parsers over this package. Nothing here imports kfp, `components/` or
`pipelines/`.
"""
