"""Baselines for defect synthesis behind defectfill's `Generator` interface, one package each, in the same
shape: `<name>/model.py` (networks or the method's pure functions), `train.py` (training),
`generator.py` (the `Generator` adapter: from_init_args / fit / from_checkpoint / synthesize). The GANs
(`multistage`, `dgt`, `r3gan`) share `harness.py` (training), `losses.py` and `generator.py`
(`ConditionalGANGenerator`); `copy_paste` and `controls` (shade, noise_blob) learn nothing."""
