"""The training engine: DeepSpeed ZeRO (`zero`, the wing that imports deepspeed), the fp32 master weights as
fragments of named parameters (`master`), EMAs over them (`ema`) and EDM2's post-hoc EMA (`phema`).
Importing this package imports nothing; `zero` imports deepspeed lazily."""
