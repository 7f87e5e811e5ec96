"""The training run: the loop (`trainer`), monitoring (`monitor`), device prefetch (`prefetch`), `--dry-run`
checks (`preflight`) and the training-step benchmark (`bench`)."""
