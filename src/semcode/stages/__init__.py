"""Pipeline stages: one module per stage, each with run(config, inputs..., out_dir) and main(argv)."""
