"""Recipe: `accelerate launch recipes/unlearn.py <config.yaml> [section.field=value ...] [--overwrite|--resume]`.

A thin wrapper over llm_unlearn.stages; the same as `llm-unlearn unlearn ...`. Works under plain python, accelerate
with several CPU processes (recipes/accelerate_configs/cpu_2proc.yaml) and on GPUs.
"""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["unlearn", *sys.argv[1:]]))
