"""`python -m gan_baselines.copy_paste --config configs/generators/copy_paste.yaml --output-dir <run>`."""

from gan_baselines.copy_paste.generator import main

raise SystemExit(main())
