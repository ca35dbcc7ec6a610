"""Your own unlabelled images as the pool: listing, growth, labels you already have, the cold
start without labels, an optional test set, and the messages for bad input."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from asvp import plan
from asvp.config import validate_config
from asvp.data.unlabelled import listing_fingerprint
from asvp.errors import ConfigError, DataError
from asvp.pool import read_labelled, read_selected, read_split_table
from asvp.steps.features import define_pool, extract
from asvp.steps.select import Query, initial_labels, select_initial, select_single_shot

CLASSES = ["cat", "dog", "bird"]


def write_images(folder: Path, names: list[str], seed: int = 0) -> None:
    """16x16 random RGB images, one per name (its extension picks the format)."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def own_images(tmp_path: Path, n: int = 30) -> Path:
    """n images in two sub-folders (one the same file names as the other), and a file that is no image."""
    root = tmp_path / "photos"
    write_images(root, [f"{'b' if k % 2 else 'a'}/img{k // 2:02d}.png" for k in range(n)])
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def config_for(root: Path | None, **data: Any) -> dict[str, Any]:
    overrides = {key: value for key, value in data.items() if key in ("schedule", "oracle")}
    data = {key: value for key, value in data.items() if key not in overrides}
    return validate_config({
        "experiment": "own", "oracle": overrides.get("oracle", "human"), "device": "cpu",
        "data": {"dataset": "unlabelled", "root": str(root) if root else None, "classes": CLASSES, **data},
        "backbone": {"checkpoint": None}, "features": {"batch_size": 16},
        "schedule": overrides.get("schedule", {"budgets": [6, 6]}),
    })


def pool_files(tmp_path: Path, config: dict[str, Any]) -> dict[str, Path]:
    data = tmp_path / "results" / "data"
    files = {"pool": data / "pool.csv", "test": data / "test.csv", "info": data / "dataset.json"}
    define_pool(config, **{k: str(v) for k, v in files.items()})
    return files


def test_a_folder_is_the_pool_with_sorted_relative_ids_and_unknown_labels(tmp_path: Path) -> None:
    root = own_images(tmp_path)
    write_images(root, ["C/UPPER.JPG"])  # extensions in any case
    files = pool_files(tmp_path, config_for(root))
    pool = read_split_table(files["pool"])
    ids = pool["sample_id"].tolist()
    assert ids == sorted(ids) and len(ids) == 31 and "a/img00.png" in ids and "b/img00.png" in ids
    assert "C/UPPER.JPG" in ids and not any(i.endswith(".txt") for i in ids)
    assert (pool["label"] == -1).all()
    test = read_split_table(files["test"])  # no data.test: a header, zero rows
    assert len(test) == 0 and files["test"].read_text().strip() == "index,source_index,sample_id,label"
    info = json.loads(files["info"].read_text())
    assert info["classes"] == CLASSES and info["num_classes"] == 3 and info["test_size"] == 0


def test_a_glob_narrows_the_pool_and_a_list_file_names_it(tmp_path: Path) -> None:
    root = own_images(tmp_path)
    pool = read_split_table(pool_files(tmp_path / "glob", config_for(root, glob="b/*"))["pool"])
    assert pool["sample_id"].tolist() == [f"b/img{k:02d}.png" for k in range(15)]

    listing = tmp_path / "list.txt"
    (root / "linked.png").symlink_to(tmp_path / "photos/a/img05.png")  # a link is named by its own path
    listing.write_text(f"b/img03.png\n\n{root / 'a/img01.png'}\na/img00.png\nlinked.png\n")  # relative to root, or absolute
    pool = read_split_table(pool_files(tmp_path / "list", config_for(root, images=str(listing)))["pool"])
    assert pool["sample_id"].tolist() == ["a/img00.png", "a/img01.png", "b/img03.png", "linked.png"]

    write_images(root, ["c/with, comma.png"])
    table = tmp_path / "list.csv"  # a CSV with a path column, relative to its own folder without data.root
    table.write_text('note,path\nx,photos/b/img02.png\ny,"photos/c/with, comma.png"\n')
    (tmp_path / "known.csv").write_text('path,class\n"photos/c/with, comma.png",dog\n')
    config = config_for(None, images=str(table), initial_labels=str(tmp_path / "known.csv"), schedule={"budgets": [1]})
    files = pool_files(tmp_path / "csv", config)
    pool = read_split_table(files["pool"])
    assert pool["sample_id"].tolist() == ["photos/b/img02.png", "photos/c/with, comma.png"]
    out = tmp_path / "csv" / "round000"  # labels given by path, relative to the same folder as the list's
    initial_labels(config, str(tmp_path / "known.csv"), str(files["pool"]), str(files["info"]), str(out / "s.csv"),
                   str(out / "s.npy"), str(out / "l.csv"))
    assert pd.read_csv(out / "l.csv")["pool_index"].tolist() == [1]


@pytest.mark.parametrize("case, message", [
    ("empty folder", "no image files under"),
    ("glob matches nothing", "match data.glob 'z/*'"),
    ("same file twice", "list.txt, line 2: 'a/../a/img00.png' is the same file as line 1; remove one"),
    ("a link to a listed file", "list.txt, line 2: 'link.png' is the same file as line 1; remove one"),
    ("missing file", "list.txt, line 2: "),
    ("empty list", "names no image"),
])
def test_a_pool_that_is_not_there_is_refused_naming_the_setting(tmp_path: Path, case: str, message: str) -> None:
    root = own_images(tmp_path)
    listing = tmp_path / "list.txt"
    data: dict[str, Any] = {}
    if case == "empty folder":
        root = tmp_path / "empty"
        root.mkdir()
    elif case == "glob matches nothing":
        data["glob"] = "z/*"
    else:
        (root / "link.png").symlink_to(root / "a/img00.png")
        listing.write_text({"same file twice": "a/img00.png\na/../a/img00.png\n", "a link to a listed file": "a/img00.png\nlink.png\n",
                            "missing file": "a/img00.png\na/gone.png\n", "empty list": "\n"}[case])
        data["images"] = str(listing)
    with pytest.raises(DataError, match=re.escape(message)):
        pool_files(tmp_path, config_for(root, **data))
    assert not (tmp_path / "results" / "data").exists()  # nothing half-written


def test_a_grown_folder_keeps_every_pool_index_and_the_labels_given(tmp_path: Path) -> None:
    root = own_images(tmp_path, 10)
    config = config_for(root)
    files = pool_files(tmp_path, config)
    before = read_split_table(files["pool"])
    fingerprint = listing_fingerprint(config["data"])
    answers = tmp_path / "known.csv"
    answers.write_text("sample_id,class\nb/img01.png,dog\na/img00.png,cat\n")
    run = tmp_path / "results" / "run" / "round000"
    initial_labels(config, str(answers), str(files["pool"]), str(files["info"]), str(run / "selected.csv"),
                   str(run / "scores.npy"), str(run / "labelled.csv"))

    write_images(root, ["a/aaa.png", "c/new.png"], seed=1)  # sorts before and after the existing ids
    assert listing_fingerprint(config["data"]) != fingerprint  # define_pool's param: Snakemake reruns it
    files["pool"].unlink()  # as Snakemake does before rerunning define_pool: the record keeps the order
    after = read_split_table(pool_files(tmp_path, config)["pool"])
    assert after["sample_id"].tolist() == before["sample_id"].tolist() + ["a/aaa.png", "c/new.png"]
    assert after["index"].tolist() == list(range(12))
    source_ids = sorted(after["sample_id"])  # source indices follow the new listing
    assert [source_ids[i] for i in after["source_index"]] == after["sample_id"].tolist()
    labelled = read_labelled(run / "labelled.csv", len(after), 3)
    assert after["sample_id"].to_numpy()[labelled["pool_index"]].tolist() == ["b/img01.png", "a/img00.png"]

    (root / "a" / "img00.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) of the pool .* no longer in the image folder, e.g. a/img00.png; "
                                        r"put them back .* or start a new experiment"):
        pool_files(tmp_path, config)


def test_initial_labels_are_round_0_in_the_files_order(tmp_path: Path) -> None:
    root = own_images(tmp_path, 12)
    known = tmp_path / "known.csv"
    known.write_text(f"path,class\nb/img02.png,bird\n{root / 'a/img04.png'},cat\na/img00.png, dog \n")
    config = config_for(root, initial_labels=str(known), schedule={"budgets": [3, 4]})
    files = pool_files(tmp_path, config)
    run = tmp_path / "round000"
    initial_labels(config, str(known), str(files["pool"]), str(files["info"]), str(run / "selected.csv"),
                   str(run / "scores.npy"), str(run / "labelled.csv"))
    pool = read_split_table(files["pool"])
    selected = read_selected(run / "selected.csv", len(pool))
    assert selected["sample_id"].tolist() == ["b/img02.png", "a/img04.png", "a/img00.png"]
    labelled = pd.read_csv(run / "labelled.csv")
    assert labelled["label"].tolist() == [2, 0, 1] and labelled["class_name"].tolist() == ["bird", "cat", "dog"]
    assert (labelled["round"] == 0).all() and np.isnan(np.load(run / "scores.npy")).all()


@pytest.mark.parametrize("text, message", [
    ("sample_id,class\na/img00.png,dgo\n", r"known.csv, line 2: unknown class 'dgo'; did you mean 'dog'\?"),
    ("sample_id,class\na/img00.png,dog\na/img00.png,cat\n", r"known.csv, line 3: sample id 'a/img00.png' is answered twice"),
    ("sample_id,class\na/notes.txt,dog\n", r"known.csv, line 2: image 'a/notes.txt' is not in the pool"),
    ("sample_id,class\na/gone.png,dog\n", r"known.csv, line 2: image 'a/gone.png' does not exist"),
    ("", r"known.csv is empty"),
    ("sample_id,class\n", r"known.csv has a header but no answers"),
])
def test_bad_initial_labels_stop_naming_the_line_and_write_nothing(tmp_path: Path, text: str, message: str) -> None:
    root = own_images(tmp_path, 12)
    files = pool_files(tmp_path, config_for(root))
    known = tmp_path / "known.csv"
    known.write_text(text)
    run = tmp_path / "round000"
    with pytest.raises(DataError, match=message):
        initial_labels(config_for(root), str(known), str(files["pool"]), str(files["info"]), str(run / "selected.csv"),
                       str(run / "scores.npy"), str(run / "labelled.csv"))
    assert not run.exists()


def test_initial_labels_fix_round_0s_budget(tmp_path: Path) -> None:
    known = tmp_path / "known.csv"
    known.write_text("sample_id,class\na/img00.png,dog\na/img01.png,cat\n")
    with pytest.raises(ConfigError, match=r"data.initial_labels lists 2 images.*Set schedule.budgets\[0\] to 2"):
        config_for(tmp_path, initial_labels=str(known))
    with pytest.raises(ConfigError, match="schedule.cold_start 'coreset' has nothing to pick"):
        config_for(tmp_path, initial_labels=str(known), schedule={"budgets": [2, 4], "cold_start": "coreset"})
    config = config_for(tmp_path, initial_labels=str(known), schedule={"budgets": [2, 4]})
    assert plan.round0_methods(config) == ()  # no selection rule makes round 0
    assert plan.Plan(config).labelled_rounds("svpp", "margin", 0) == [0]  # round 0 needs no person


@pytest.mark.parametrize("data, oracle, message", [
    ({}, "simulated", "has no labels, so the simulated oracle cannot answer. Set oracle: human"),
    ({"classes": ["cat", "cat"]}, "human", "class 'cat' is listed twice"),
    ({"classes": ["cat", " "]}, "human", "class 2 has an empty name"),
    ({"classes": None}, "human", "needs data.classes"),
    ({"pool_subset": 10}, "human", "data.pool_subset does not apply to your own images"),
    ({"dataset": "fashion_mnist", "glob": "*.png"}, "human", "data.glob applies to data.dataset unlabelled"),
])
def test_config_mistakes_stop_before_any_job(tmp_path: Path, data: dict[str, Any], oracle: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_for(tmp_path, oracle=oracle, **data)


def test_a_class_file_names_the_classes(tmp_path: Path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("cat\n\n dog\nbird\n")
    root = own_images(tmp_path, 4)
    info = json.loads(pool_files(tmp_path, config_for(root, classes=str(names)))["info"].read_text())
    assert info["classes"] == CLASSES


def test_a_labelled_test_set_from_class_folders_or_a_csv(tmp_path: Path) -> None:
    root = own_images(tmp_path, 4)
    write_images(tmp_path / "test", ["dog/x.png", "cat/y.png", "cat/z.jpeg"])
    test = read_split_table(pool_files(tmp_path / "folders", config_for(root, test=str(tmp_path / "test")))["test"])
    assert test["sample_id"].tolist() == ["cat/y.png", "cat/z.jpeg", "dog/x.png"] and test["label"].tolist() == [0, 0, 1]
    listing = tmp_path / "test.csv"
    listing.write_text("path,class\ntest/dog/x.png,bird\ntest/cat/y.png,dog\n")
    test = read_split_table(pool_files(tmp_path / "csv", config_for(root, test=str(listing)))["test"])
    assert test["sample_id"].tolist() == ["test/dog/x.png", "test/cat/y.png"] and test["label"].tolist() == [2, 1]

    listing.write_text("path,class\ntest/dog/x.png,bird\ntest/dog/gone.png,dog\n")
    with pytest.raises(DataError, match=r"test.csv, line 3: image test/dog/gone.png does not exist"):
        pool_files(tmp_path / "gone", config_for(root, test=str(listing)))
    listing.write_text("path,class\ntest/dog/x.png,brid\n")
    with pytest.raises(DataError, match=r"test.csv, line 2: unknown class 'brid'; did you mean 'bird'\?"):
        pool_files(tmp_path / "typo", config_for(root, test=str(listing)))
    write_images(tmp_path / "test", ["dgo/w.png"])
    with pytest.raises(DataError, match=r"test folder .*dgo \(data.test\) is not a class of data.classes"):
        pool_files(tmp_path / "bad", config_for(root, test=str(tmp_path / "test")))


def test_an_image_that_does_not_decode_is_named_or_skipped(tmp_path: Path) -> None:
    root = own_images(tmp_path, 6)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    config = config_for(root)
    files = pool_files(tmp_path / "stop", config)
    with pytest.raises(DataError, match=r"image file .*a/broken.png cannot be read"):
        extract(config, str(files["pool"]), str(files["test"]), str(tmp_path / "stop" / "features.h5"))
    assert not (tmp_path / "stop" / "features.h5").exists()
    skipping = config_for(root, bad_images="skip")
    files = pool_files(tmp_path / "skip", skipping)
    assert "a/broken.png" not in read_split_table(files["pool"])["sample_id"].tolist()
    assert [e["sample_id"] for e in json.loads(files["info"].read_text())["skipped_images"]] == ["a/broken.png"]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, default_weights: Path) -> tuple[dict[str, Any], dict[str, Path], Path]:
    """30 own images without a test set, through define_pool and extract (the packaged weights:
    the same features in every session, so the picks on them are fixed)."""
    tmp_path = tmp_path_factory.mktemp("own")
    config = config_for(own_images(tmp_path))
    config["backbone"]["checkpoint"] = str(default_weights)
    files = pool_files(tmp_path, config)
    features = tmp_path / "features" / "pretrained.h5"
    extract(config, str(files["pool"]), str(files["test"]), str(features))
    return config, files, features


def test_an_empty_test_set_goes_through_extraction(extracted: tuple[dict[str, Any], dict[str, Path], Path]) -> None:
    _, _, features = extracted
    with h5py.File(features, "r") as handle:
        assert handle["pool/features"].shape[0] == 30 and (handle["pool/labels"][:] == -1).all()
        assert handle["test/features"].shape[0] == 0 and handle["test/labels"].shape == (0,)


def _round0(config: dict[str, Any], files: dict[str, Path], features: Path, cold_start: str, out: Path) -> list[int]:
    config = {**config, "schedule": {**config["schedule"], "cold_start": cold_start}}
    query = Query("margin", 6, 0, 0, str(files["pool"]), None, str(out / "selected.csv"), str(out / "scores.npy"))
    if plan.round0_picker(config, "margin") is None:
        select_initial(query)
    else:
        excerpt = json.loads(shlex.split(plan.round0_params_json(config, "margin"))[0])
        select_single_shot(query, str(features), excerpt)
    return read_selected(out / "selected.csv", 30)["pool_index"].tolist()


@pytest.mark.parametrize("cold_start", ["random", "coreset", "activeft"])
def test_each_cold_start_picks_round_0_without_labels_reproducibly(
        extracted: tuple[dict[str, Any], dict[str, Path], Path], tmp_path: Path, cold_start: str,
        torch_single_thread: None) -> None:
    config, files, features = extracted
    picked = _round0(config, files, features, cold_start, tmp_path / "first")
    assert len(picked) == len(set(picked)) == 6
    assert _round0(config, files, features, cold_start, tmp_path / "again") == picked
    if cold_start != "random":
        assert picked != _round0(config, files, features, "random", tmp_path / "random")
        assert json.loads(shlex.split(plan.round0_params_json({**config, "schedule": {"cold_start": cold_start}},
                                                              "margin"))[0])["schedule"] == {"cold_start": cold_start}


def test_coreset_cold_start_is_the_coreset_strategys_k_center_pick(
        extracted: tuple[dict[str, Any], dict[str, Path], Path], tmp_path: Path) -> None:
    from asvp import features as feature_store
    from asvp.steps.select import round_rng
    from asvp.strategies import PoolState, get_strategy

    config, files, features = extracted
    picked = _round0(config, files, features, "coreset", tmp_path)
    x, _ = feature_store.load_rows(features, "pool")
    state = PoolState(unlabelled=np.arange(30), labelled=np.zeros(0, dtype=np.int64), embeddings=x)
    assert picked == get_strategy("coreset").select(state, 6, round_rng(0, 0))[0].tolist()


def test_a_random_cold_start_leaves_every_existing_job_unchanged() -> None:
    config = validate_config({"experiment": "t", "strategies": ["margin", "activeft"]})
    assert "schedule" not in json.loads(shlex.split(plan.round0_params_json(config, "activeft"))[0])
    assert plan.round0_picker(config, "margin") is None and plan.round0_picker(config, "activeft") == "activeft"
    assert {"glob", "images", "classes", "test", "initial_labels"}.isdisjoint(plan.params_excerpt(config, "data")["data"])
    assert listing_fingerprint(config["data"]) == ""


def test_round_0_from_initial_labels_imports_no_torch(tmp_path: Path) -> None:
    from test_cheap_jobs import asvp, assert_torch_free

    root = own_images(tmp_path, 6)
    known = tmp_path / "known.csv"
    known.write_text("sample_id,class\na/img01.png,dog\n")
    config = config_for(root, initial_labels=str(known), schedule={"budgets": [1]})
    files = pool_files(tmp_path, config)
    assert_torch_free(asvp(tmp_path, "initial-labels", "--config-json", json.dumps(plan.params_excerpt(config, "data")),
                           "--labels", str(known), "--pool", str(files["pool"]), "--dataset-json", str(files["info"]),
                           "--selected-out", "s.csv", "--scores-out", "s.npy", "--labelled-out", "l.csv"))
    assert pd.read_csv(tmp_path / "l.csv")["class_name"].tolist() == ["dog"]


@pytest.mark.workflow
def test_a_workflow_on_own_images_starts_from_the_labels_given(tmp_path: Path) -> None:
    """30 own images, 6 labels given, people label round 1: the DAG runs round 0 and 1 without
    any answer for round 0 and without a test set (evaluation is not asked for here)."""
    from test_workflow import snakemake

    def run_until(target: str) -> Any:
        return snakemake(tmp_path, "--printshellcmds", target, configfiles=(config,))

    root = own_images(tmp_path)
    known = tmp_path / "known.csv"
    known.write_text("sample_id,class\n" + "".join(f"a/img{k:02d}.png,{CLASSES[k % 3]}\n" for k in range(6)))
    config = tmp_path / "own.yaml"
    config.write_text(json.dumps({
        "experiment": "own", "seeds": [0], "methods": ["svpp"], "strategies": ["margin"], "device": "cpu",
        "oracle": "human", "backbone": {"checkpoint": None},
        "data": {"dataset": "unlabelled", "root": str(root), "classes": CLASSES, "initial_labels": str(known)},
        "features": {"batch_size": 16}, "schedule": {"budgets": [6, 5]}, "proxy": {"epochs": 2},
        "evaluation": {"at": [11]},
    }))
    run = tmp_path / "results/own/svpp/margin/seed0"
    request = "results/own/svpp/margin/seed0/round001/to_label.csv"
    first = run_until(request)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-4000:]
    labelled = pd.read_csv(run / "round000/labelled.csv")
    assert labelled["sample_id"].tolist() == [f"a/img{k:02d}.png" for k in range(6)]
    asked = pd.read_csv(run / request.split("seed0/")[1], dtype={"sample_id": str})
    assert len(asked) == 5 and not set(asked["sample_id"]) & set(labelled["sample_id"])

    (run / "labels").mkdir()
    (run / "labels/round001.csv").write_text("sample_id,class\n" + "".join(f"{s},bird\n" for s in asked["sample_id"]))
    second = run_until("results/own/svpp/margin/seed0/round001/labelled.csv")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-4000:]
    grown = pd.read_csv(run / "round001/labelled.csv")
    assert len(grown) == 11 and grown["class_name"].tolist()[6:] == ["bird"] * 5
    assert not (run / "round000/to_label.csv").exists()

    write_images(root, ["c/new.png"], seed=2)  # the folder grows: define_pool's listing param changes
    grown_run = run_until("results/own/svpp/margin/seed0/round001/labelled.csv")
    assert grown_run.returncode == 0, grown_run.stdout[-3000:] + grown_run.stderr[-4000:]
    ran = grown_run.stdout + grown_run.stderr
    assert "define_pool" in ran and "extract_pretrained" in ran, ran[-3000:]
    assert not {"initial_labels", "select_proxy", "request_labels", "label"} & set(re.findall(r"rule (\w+):", ran))
    assert pd.read_csv(run / "round001/labelled.csv").equals(grown)  # the labels paid for are kept
    assert pd.read_csv(tmp_path / "results/own/data/pool.csv")["sample_id"].tolist()[-1] == "c/new.png"


@pytest.mark.workflow
def test_a_cold_start_on_the_features_is_round_0_of_every_strategy(tmp_path: Path) -> None:
    from test_workflow import TINY, planned_jobs, snakemake

    override = tmp_path / "cold.yaml"
    override.write_text("methods: [svpp, random]\nstrategies: [margin, activeft]\nschedule:\n  cold_start: coreset\n")
    planned = snakemake(tmp_path, "--dry-run", "--printshellcmds", configfiles=(TINY, override))
    assert planned.returncode == 0, planned.stderr[-3000:]
    round0 = {(job["method"], job["strategy"]): rule for rule, job in planned_jobs(planned.stdout)
              if rule in ("select_initial", "select_cold_start") or rule == "select_single_shot" and job["r"] == "000"}
    assert round0 == {("svpp", "margin"): "select_cold_start", ("svpp", "activeft"): "select_cold_start",
                      ("random", "random"): "select_cold_start"}
    assert '"schedule": {"cold_start": "coreset"}' in planned.stdout


def test_a_grown_pool_extracts_only_its_new_images(tmp_path: Path, default_weights: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = own_images(tmp_path, 10)
    config = config_for(root)
    config["backbone"]["checkpoint"] = str(default_weights)
    files = pool_files(tmp_path, config)
    out = tmp_path / "features" / "pretrained.h5"
    extract(config, str(files["pool"]), str(files["test"]), str(out))
    with h5py.File(out, "r") as handle:
        before = handle["pool/features"][:]

    write_images(root, ["a/aaa.png", "c/new.png"], seed=1)
    for stale in (files["pool"], out):  # Snakemake deletes a rerun job's outputs first
        stale.unlink()
    files = pool_files(tmp_path, config)
    capsys.readouterr()
    extract(config, str(files["pool"]), str(files["test"]), str(out))
    assert "pool features: 10 rows copied from the previous extraction" in capsys.readouterr().out
    fresh = tmp_path / "fresh.h5"
    extract(config, str(files["pool"]), str(files["test"]), str(fresh))
    with h5py.File(out, "r") as grown, h5py.File(fresh, "r") as whole:
        assert grown["pool/sample_ids"].asstr()[:].tolist()[10:] == ["a/aaa.png", "c/new.png"]
        np.testing.assert_array_equal(grown["pool/features"][:10], before)
        np.testing.assert_allclose(grown["pool/features"][:], whole["pool/features"][:], atol=1e-4)


@pytest.mark.workflow
def test_labels_given_are_round_0_of_every_method_with_the_simulated_oracle_too(tmp_path: Path) -> None:
    from test_workflow import TINY, planned_jobs, snakemake

    known = tmp_path / "known.csv"
    known.write_text("sample_id,class\n" + "".join(f"train/{k:06d},Bag\n" for k in range(20)))
    override = tmp_path / "given.yaml"
    override.write_text(f"methods: [svpp, random, activeft_pre]\ndata:\n  initial_labels: {known}\n")
    planned = snakemake(tmp_path, "--dry-run", configfiles=(TINY, override))
    assert planned.returncode == 0, planned.stderr[-3000:]
    jobs = planned_jobs(planned.stdout)
    assert sorted(job["method"] for rule, job in jobs if rule == "initial_labels") == ["activeft_pre", "random", "svpp"]
    assert not [rule for rule, job in jobs if rule in ("select_initial", "select_cold_start")]
    assert "000" not in [job["r"] for rule, job in jobs if rule == "select_single_shot"]
