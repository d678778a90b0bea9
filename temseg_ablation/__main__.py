"""``python -m temseg_ablation``: the Hydra app over ``conf/`` (see ``--help``)."""

from .app.main import main

if __name__ == "__main__":
    main()
