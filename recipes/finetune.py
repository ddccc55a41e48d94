"""Recipe: `accelerate launch recipes/finetune.py <config.yaml> [section.field=value ...] [--overwrite|--resume]`.

A thin wrapper over llm_unlearn.stages; the same as `llm-unlearn finetune ...`. Works under plain python, accelerate
with several CPU processes (recipes/accelerate_configs/cpu_2proc.yaml) and on GPUs.
"""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
