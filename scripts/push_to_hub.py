#!/usr/bin/env python
"""Push an rcl_hf model, dataset or demo Space to the Hugging Face Hub (or dry-run it).

Examples::

    # the folder that would be uploaded, with its model card, checked offline
    python scripts/push_to_hub.py --model_dir outputs/run --repo_id me/rcl-brain-mri --dry_run_dir /tmp/upload

    # a real push (token from HF_TOKEN or `hf auth login`, never from the command line)
    python scripts/push_to_hub.py --model_dir outputs/run --repo_id me/rcl-brain-mri --private

    python scripts/push_to_hub.py --kind dataset --dataset_dir data/brain_mri_dd --repo_id me/brain-mri
    # the Space, with the models it serves (folders shipped under models/ with their cards, or Hub ids)
    # and rcl_hf itself inside (built from this checkout); the dry run lists what it checked
    python scripts/push_to_hub.py --kind space --space_dir spaces_demo --repo_id me/rcl-demo \
        --space_models runs/space/rcl runs/space/ce --dry_run_dir /tmp/space

Arguments are those of :class:`rcl_hf.commands.push.PushArguments` (``--help`` lists them). On failure
the script prints one ``error: ...`` line to stderr and exits with status 2.
"""

import sys

from rcl_hf.commands.push import main

if __name__ == "__main__":
    sys.exit(main())
