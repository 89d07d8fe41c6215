"""``jaxrank data check --config C``: is a config's data (and are its weights) where it says,
readable, and how much of it is usable, before any training starts.

It lists what is missing with where to get it, reads every file the recipe will read through
the same readers (bad rows counted by reason, the first few named), counts what is usable,
and draws a gallery of a few usable queries. ``jaxrank reproduce`` runs the same check first.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import PIL.Image

from jaxrank.data.errors import BadRows, DataError

SOURCES = {
    "E-VQA": "https://github.com/google-research/google-research/tree/master/encyclopedic_vqa",
    "InfoSeek": "https://github.com/Go2Heart/EchoSight (InfoSeek CSVs and the 100K KB)",
    "inaturalist": "https://github.com/visipedia/inat_comp/tree/master/2021 (iNat 2021 train/val)",
    "landmarks": "https://github.com/cvdfoundation/google-landmark (GLDv2 train)",
    "id2name": "https://github.com/Go2Heart/EchoSight (train/val_id2name.json)",
    "mbeir": "https://huggingface.co/datasets/TIGER-Lab/M-BEIR",
    "oven": "https://github.com/edchengg/oven_eval (image_downloads)",
    "tfds": "tfds build <builder> --file_format=array_record (see docs/rar.md)",
    "coop": "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md (splits, split_fewshot)",
    "weights": "the Hugging Face Hub: `huggingface-cli download <id>` on a machine online",
}


@dataclasses.dataclass
class DataCheck:
    missing: list[dict[str, str]] = dataclasses.field(default_factory=list)
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)
    samples: list[tuple[np.ndarray, str]] = dataclasses.field(default_factory=list)

    def need(self, what: str, where: str, source: str) -> bool:
        """Record ``where`` as missing unless it exists; True when it exists."""
        if where and Path(where).exists():
            return True
        self.missing.append({"what": what, "path": where or "(not set)", "get it": source})
        return False


def _weights(check: DataCheck, what: str, source: str) -> None:
    """A checkpoint folder, or a hub id already in the local Hugging Face cache."""
    if not source or Path(source).exists():
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(source, local_files_only=True)
    except Exception:  # not cached (the hub's error types vary by version)
        check.missing.append({"what": what, "path": source, "get it": SOURCES["weights"]})


def _evqa_format(
    cfg: ml_collections.ConfigDict, check: DataCheck, samples: int, needs: list[tuple]
) -> None:
    """E-VQA's CSVs and KB, or InfoSeek converted to them: ``needs`` lists the image files."""
    from jaxrank.data.evqa import read_evqa_csv, read_query_image
    from jaxrank.data.wiki_kb import iter_kb
    from jaxrank.region_r1.benchmark import image_layout

    data, name = cfg.data, data_name(cfg)
    files = [
        (f"{name} train CSV", data.train_csv, SOURCES[name]),
        (f"{name} test CSV", data.test_csv, SOURCES[name]),
        (f"{name} knowledge base", data.kb, SOURCES[name]),
        *needs,
    ]
    present = [check.need(*item) for item in files]
    _weights(check, "scorer checkpoint", cfg.scorer_checkpoint)
    _weights(check, "policy checkpoint", cfg.policy.checkpoint)
    if not all(present):
        return
    for split in ("train", "test"):
        bad, usable = BadRows(), 0
        layout = image_layout(data, data.get(f"{split}_id2name", ""))
        for example in read_evqa_csv(data[f"{split}_csv"], bad):
            image = read_query_image(example, layout, bad)
            if image is not None:
                usable += 1
                if len(check.samples) < samples:
                    check.samples.append((image, f"{split}: {example.question}"))
        check.counts[split] = {"usable": usable, **bad.report()}
    bad = BadRows()
    check.counts["kb"] = {"entries": sum(1 for _ in iter_kb(data.kb, bad)), **bad.report()}


def data_name(cfg: ml_collections.ConfigDict) -> str:
    return {"evqa": "E-VQA", "infoseek": "InfoSeek"}[cfg.data.benchmark]


def _evqa(cfg: ml_collections.ConfigDict, check: DataCheck, samples: int) -> None:
    data = cfg.data
    needs = [
        ("iNaturalist 2021 images", data.inaturalist_root, SOURCES["inaturalist"]),
        ("Google Landmarks v2 images", data.landmarks_root, SOURCES["landmarks"]),
        ("iNat train id2name", data.train_id2name, SOURCES["id2name"]),
        ("iNat val id2name", data.test_id2name, SOURCES["id2name"]),
    ]
    _evqa_format(cfg, check, samples, needs)


def _infoseek(cfg: ml_collections.ConfigDict, check: DataCheck, samples: int) -> None:
    _evqa_format(cfg, check, samples, [("OVEN images", cfg.data.oven_root, SOURCES["oven"])])


def _tfds(cfg: ml_collections.ConfigDict, check: DataCheck, samples: int) -> None:
    from jaxrank.data import fewshot_tfds
    from jaxrank.rar.data import protocol_splits

    data = cfg.data
    train, test = protocol_splits(data)
    parts = {
        "shots": (data.name, train),
        "test": (data.name, test),
        "ranker pool": (data.finetune_name, data.finetune_split),
    }
    for part, (name, split) in parts.items():
        try:
            source = fewshot_tfds.load_split(name, split, data.data_dir or None)
        except DataError as e:
            check.missing.append(
                {"what": f"{part}: {name} {split}", "path": str(e), "get it": SOURCES["tfds"]}
            )
            continue
        check.counts[part] = {
            "dataset": name,
            "split": split,
            "examples": len(source),
            "classes": len(fewshot_tfds.class_names(source)),
        }
        names = fewshot_tfds.class_names(source)
        for i in range(min(samples - len(check.samples), len(source))):
            record = source[i]
            check.samples.append((np.asarray(record["image"]), f"{part}: {names[record['label']]}"))
    _weights(check, "memory encoder", "" if cfg.memory.encoder == "pixels" else cfg.memory.encoder)
    _weights(check, "ranker checkpoint", cfg.ranker.checkpoint)


def _coop(cfg: ml_collections.ConfigDict, check: DataCheck, samples: int) -> None:
    from jaxrank.data import coop_fewshot, coop_splits
    from jaxrank.data.images import read_image

    data = cfg.data
    if not check.need("CoOp data root", data.coop_root, SOURCES["coop"]):
        return
    parts = {"shots and test": data.name, "ranker pool": data.finetune_name}
    for part, name in parts.items():
        bad = BadRows()
        try:
            splits = coop_splits.read_splits(data.coop_root, name, bad)
        except DataError as e:
            what = {"what": f"{part}: {name}", "path": str(e), "get it": SOURCES["coop"]}
            check.missing.append(what)
            continue
        check.counts[part] = {
            "dataset": name,
            **{split: len(splits.rows(split)) for split in coop_splits.SPLITS},
            "classes": len(splits.names),
            **bad.report(),
        }
        for row in splits.test[: max(samples - len(check.samples), 0)]:
            image = read_image(row.path, str(row.path), bad)
            if image is not None:
                check.samples.append((image, f"{part}: {row.classname}"))
    if data.pickled_shots:
        for shots in cfg.eval.shots:
            path = coop_fewshot.fewshot_pickle_path(data.coop_root, data.name, shots, cfg.seed)
            check.need(f"CoOp's {shots}-shot draw, seed {cfg.seed}", str(path), SOURCES["coop"])
    _weights(check, "memory encoder", "" if cfg.memory.encoder == "pixels" else cfg.memory.encoder)
    _weights(check, "ranker checkpoint", cfg.ranker.checkpoint)


def _mbeir(cfg: ml_collections.ConfigDict, check: DataCheck, samples: int) -> None:
    from jaxrank.data import mbeir

    root, split = cfg.data.root, cfg.data.split
    if "embedder" in cfg:
        _weights(check, "embedder checkpoint", cfg.embedder.checkpoint)
    if not check.need("M-BEIR", root, SOURCES["mbeir"]):
        return
    splits = dict.fromkeys((split, cfg.data.get("train_split", split)))
    files = [
        (f"{d} task {t} {kind} ({s})", fn(root, d, t, s))
        for s in splits
        for d, t in mbeir.EVAL_PAIRS
        for kind, fn in (
            ("queries", mbeir.query_path),
            ("local pool", mbeir.local_pool_path),
            ("qrels", mbeir.qrels_path),
        )
    ]
    files.append(("instructions", mbeir.instructions_path(root)))
    present = [check.need(what, str(path), SOURCES["mbeir"]) for what, path in files]
    if not all(present):
        return
    for dataset, task in mbeir.EVAL_PAIRS:
        bad = BadRows()
        path = mbeir.query_path(root, dataset, task, split)
        # As the recipe reads them: images under the root, checked (paths out of it refused).
        queries = mbeir.read_queries(path, bad, image_root=root, check_images=True)
        check.counts[f"{dataset}/task{task}"] = {"queries": len(queries), **bad.report()}
    del samples


def _synthetic(cfg: ml_collections.ConfigDict, check: DataCheck, samples: int) -> None:
    del samples
    check.counts["synthetic"] = "rendered on the fly from the config's world; nothing to read"


def checker(cfg: ml_collections.ConfigDict) -> Callable[..., None]:
    """The check of a config's data source."""
    data = cfg.get("data", ml_collections.ConfigDict())
    if data.get("benchmark") == "evqa":
        return _evqa
    if data.get("benchmark") == "mbeir":
        return _mbeir
    if data.get("benchmark") == "infoseek":
        return _infoseek
    if data.get("source") == "tfds":
        return _tfds
    if data.get("source") == "coop":
        return _coop
    if data.get("benchmark", "synthetic") == "synthetic":
        return _synthetic
    raise DataError(f"no data check for data.benchmark={data.get('benchmark')!r} yet")


def check_data(cfg: ml_collections.ConfigDict, samples: int = 8) -> DataCheck:
    check = DataCheck()
    checker(cfg)(cfg, check, samples)
    return check


def write_check(check: DataCheck, out: Path) -> None:
    """``data_check.json`` and, when there are usable queries, ``data_check.png``."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"missing": check.missing, "counts": check.counts}
    (out / "data_check.json").write_text(json.dumps(report, indent=2) + "\n")
    if check.samples:
        from jaxrank.data.gallery import render_gallery

        size = 160
        images = np.stack(
            [
                np.asarray(PIL.Image.fromarray(i).convert("RGB").resize((size, size)))
                for i, _ in check.samples
            ]
        )
        nothing = np.full((len(images), 4), np.nan, np.float32)
        render_gallery(images, nothing, [t[:60] for _, t in check.samples], out / "data_check.png")


def print_missing(check: DataCheck) -> None:
    print(f"missing ({len(check.missing)}):")
    for item in check.missing:
        print(f"  - {item['what']}: {item['path']}\n      get it: {item['get it']}")


def _run(args, cfg: ml_collections.ConfigDict) -> None:
    """Exit status 1 when anything is missing."""
    check = check_data(cfg, args.samples)
    write_check(check, Path(args.out))
    print(json.dumps(check.counts, indent=2))
    if check.missing:
        print_missing(check)
        raise SystemExit(1)
    print(f"data complete; report in {Path(args.out) / 'data_check.json'}")


def add_commands(sub, config_help: str, config: Callable) -> None:
    """``jaxrank data check``."""
    data = sub.add_parser("data", help="inspect a config's data")
    commands = data.add_subparsers(dest="data_command", required=True)
    check = commands.add_parser("check", help="validate the data layout without training")
    check.add_argument("--config", required=True, help=config_help)
    check.add_argument("--out", default="data_check", help="folder for the JSON and PNG")
    check.add_argument("--samples", type=int, default=8, help="queries in the gallery")
    check.set_defaults(run=lambda args, extra: _run(args, config(args, extra)))
