"""The `tessera` command (console script `tessera = tessera.cli.main:main`; also `python -m tessera.cli`).

    main.py      the parser, `generate`, `info`, `export`, `viewer`, and the only place errors become exit codes
    edit.py      `tessera edit inpaint|outpaint|continue` and `--preview-dir`
    options.py   options shared by the commands that open a model; help texts with the model's real defaults
    output.py    progress bar, output checks and limits, file-name-safe class names

The CLI sits above both packages: it imports tessera.runtime and (for `export`) tessera.export;
neither imports it (tests/test_layers.py).
"""
