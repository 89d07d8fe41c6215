"""RAR's few-shot protocol (PAPERS.md §3) on CoOp's own files: CoOp's splits, the shots CoOp
drew (``split_fewshot/shot_{K}-seed_{S}.pkl``) and FGVC-Aircraft for the ranker's data, as the
paper has them. The data root holds CoOp's dataset folders (DATA_FORMATS.md §5, CoOp's
DATASETS.md for where to get each):

    jaxrank train --config configs/rar/fewshot_coop.py --workdir runs/rar_pets_coop \
        --config.data.coop_root=/data/coop --config.data.name=oxford_pets --config.seed=1

Dataset names are the keys of ``jaxrank.data.coop_splits.COOP_DATASETS``. CoOp's seeds are 1,
2 and 3; a seed whose pickles are absent fails with the missing file's path (set
``data.pickled_shots=False`` to draw shots by seed instead). Everything else (the CLIP
ViT-B/16 memory, the Qwen2-VL ranker with LoRA, lr 1e-5, 1 epoch) is ``fewshot.py``'s.
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file

FEWSHOT = Path(__file__).resolve().parent / "fewshot.py"


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(FEWSHOT)
    c.seed = 1
    c.data = ml_collections.ConfigDict(
        {
            "source": "coop",
            "coop_root": "",  # the folder holding CoOp's dataset folders
            "name": "oxford_pets",
            "image_size": 224,
            "test_split": "test",
            "pickled_shots": True,  # CoOp's own draws; False draws by seed
            "strict": True,  # a bad row stops the run; False skips it and reports it
            "finetune_name": "fgvc_aircraft",
            "finetune_split": "train",
        }
    )
    # FGVC-Aircraft ranking data, as RAR's fine-tuning notebook has them, with its prompt
    # ("a aircraft classification expert"); evaluation keeps fewshot.py's "fewshot" prompt.
    c.ranker.train_prompt = "finetune"
    return c
