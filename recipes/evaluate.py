"""Recipe: `accelerate launch recipes/evaluate.py <config.yaml> [section.field=value ...] [--overwrite|--resume]`.

A thin wrapper over llm_unlearn.stages; the same as `llm-unlearn evaluate ...`. Works under plain python, accelerate
with several CPU processes (recipes/accelerate_configs/cpu_2proc.yaml) and on GPUs.
"""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
