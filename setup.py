"""Package layout: the code plus ``conf/`` shipped inside the package as ``temseg_ablation.conf``.

``conf/`` stays at the top of the repository, where Hydra users look for it; mapping it into
the package lets a non-editable install (``pip install .``) find its config as well.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["temseg_ablation", "temseg_ablation.*"]),
              "temseg_ablation.conf"],
    package_dir={"temseg_ablation.conf": "conf"},
    package_data={"temseg_ablation.conf": ["*.yaml", "*.md", "**/*.yaml", "**/*.md"]},
)
