"""Label Studio as the oracle: its import files and exports as answers, then a real server.

The live tests start the real `label-studio` server from its own venv (made by
`scripts/bootstrap.sh --label-studio-server`, which `make test` runs; the tests fail, not skip,
without it) on a free loopback port, offline, with its home and data in a temporary folder;
nothing of Label Studio is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from asvp import label_studio
from asvp.errors import ConfigError, DataError
from asvp.oracle import answered, read_answers, read_request

REPO = Path(__file__).resolve().parents[1]
MY_IMAGES = REPO / "config" / "my_images.yaml"  # the README's walk-through, here with Label Studio
SERVER_VENV = Path(os.environ.get("ASVP_LABEL_STUDIO_VENV", REPO / ".venv-label-studio"))
SERVER_VERSION = "1.23.2"
TOKEN = "asvp-test-token"  # a throwaway legacy token of the test's own server
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]


# --- files, no server -----------------------------------------------------------------------


def _round(tmp_path: Path, round_index: int = 0) -> tuple[Path, pd.DataFrame]:
    """A run folder with round r's to_label.csv of four small images, and its Label Studio files."""
    run = tmp_path / "results/exp/svpp/margin/seed0"
    round_dir = run / f"round{round_index:03d}"
    (round_dir / "to_label").mkdir(parents=True)
    rows = []
    for k in range(4):
        image = round_dir / "to_label" / f"s{round_index}_{k}.png"
        Image.new("L", (8, 8), 40 * k).save(image)
        rows.append({"pool_index": 10 * round_index + k, "sample_id": f"s{round_index}_{k}", "image_path": str(image),
                     "predicted_class": CLASSES[k] if k % 2 else ""})
    pd.DataFrame(rows).to_csv(round_dir / "to_label.csv", index=False)
    request = read_request(round_dir / "to_label.csv")
    label_studio.write_files(request, CLASSES, None, round_dir, tmp_path)
    return run, request


def _export(run: Path, round_index: int, choices: list[str | None], project: int = 1) -> list[dict]:
    """Label Studio's JSON export of the round's tasks (the shape measured on a real server):
    each task annotated with its choice; None is a skipped task."""
    tasks = json.loads((run / f"round{round_index:03d}" / label_studio.TASKS_FILE).read_text())
    exported = []
    for k, (task, choice) in enumerate(zip(tasks, choices)):
        result = [] if choice is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                             "value": {"choices": [choice]}, "origin": "manual"}]
        exported.append({"id": 100 * round_index + k, "data": task["data"], "project": project, "inner_id": k + 1,
                         "total_annotations": 1, "cancelled_annotations": int(choice is None), "predictions": [],
                         "annotations": [{"id": 500 + k, "completed_by": 1, "result": result,
                                          "was_cancelled": choice is None, "ground_truth": False, "lead_time": 1.5}]})
    return exported


def _drop(run: Path, round_index: int, tasks: list[dict] | str) -> Path:
    path = run / "labels" / f"round{round_index:03d}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(tasks if isinstance(tasks, str) else json.dumps(tasks, indent=2))
    return path


def test_request_writes_tasks_with_local_file_urls_and_the_labelling_config(tmp_path: Path) -> None:
    run, request = _round(tmp_path)
    tasks = json.loads((run / "round000" / label_studio.TASKS_FILE).read_text())
    assert len(tasks) == 4
    first, second = tasks[0], tasks[1]
    assert first["data"]["image"] == "/data/local-files/?d=results/exp/svpp/margin/seed0/round000/to_label/s0_0.png"
    assert first["data"]["sample_id"] == "s0_0" and first["data"]["pool_index"] == 0
    assert first["data"]["asvp_request"] == "exp/svpp/margin/seed0/round000"
    assert "predictions" not in first  # no hint, no pre-annotation
    assert second["predictions"][0]["result"][0]["value"] == {"choices": ["Trouser"]}
    xml = (run / "round000" / label_studio.CONFIG_FILE).read_text()
    assert label_studio.config_classes(xml) == CLASSES and 'value="$image"' in xml
    with pytest.raises(ConfigError, match="label_studio.document_root"):
        label_studio.make_tasks(request, CLASSES, None, tmp_path / "elsewhere", "k")


def test_export_answers_in_to_label_order(tmp_path: Path) -> None:
    run, request = _round(tmp_path)
    path = _drop(run, 0, list(reversed(_export(run, 0, ["Dress", "Trouser", "Pullover", "T-shirt/top"]))))
    assert answered(run, 0) == path
    assert read_answers(path, request, CLASSES).tolist() == [3, 1, 2, 0]


def test_a_project_holding_every_round_exports_this_round_only(tmp_path: Path) -> None:
    run, request = _round(tmp_path)
    _round(tmp_path, 1)
    both = _export(run, 1, ["Dress"] * 4) + _export(run, 0, ["Trouser"] * 4)
    assert read_answers(_drop(run, 0, both), request, CLASSES).tolist() == [1] * 4


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t[2]["annotations"].__setitem__(0, {**t[2]["annotations"][0], "result": [], "was_cancelled": True}),
     r"1 task\(s\) skipped or without a class: s0_2 \(task 2\); choose a class for each in Label Studio"),
    (lambda t: t[1].__setitem__("annotations", []), r"1 task\(s\) skipped or without a class: s0_1"),
    (lambda t: t[0]["annotations"].append({**t[0]["annotations"][0], "result": [
        {"type": "choices", "value": {"choices": ["Dress"]}}]}),
     r"annotations disagree on 1 task\(s\): s0_0 \(task 0: 'Dress', 'Trouser'\); delete the wrong annotation"),
    (lambda t: t[3]["annotations"][0]["result"][0]["value"].__setitem__("choices", ["Trousers"]),
     r"line \d+: unknown class 'Trousers'; did you mean 'Trouser'\?"),
    (lambda t: t[3]["data"].__setitem__("sample_id", "s9_9"), r"sample id 's9_9' was not requested this round"),
    (lambda t: t.pop(), r"1 requested image\(s\) have no answer, e.g. s0_3"),
])
def test_bad_exports_are_refused_with_the_fix(tmp_path: Path, change, message: str) -> None:
    run, request = _round(tmp_path)
    tasks = _export(run, 0, ["Trouser"] * 4)
    change(tasks)
    with pytest.raises(DataError, match=message):
        read_answers(_drop(run, 0, tasks), request, CLASSES)


def test_disagreeing_annotations_settled_by_ground_truth(tmp_path: Path) -> None:
    run, request = _round(tmp_path)
    tasks = _export(run, 0, ["Trouser"] * 4)
    tasks[0]["annotations"].append({**tasks[0]["annotations"][0], "ground_truth": True,
                                    "result": [{"type": "choices", "value": {"choices": ["Dress"]}}]})
    assert read_answers(_drop(run, 0, tasks), request, CLASSES).tolist() == [3, 1, 1, 1]


def test_export_of_another_round_or_project_or_format_is_refused(tmp_path: Path) -> None:
    run, request = _round(tmp_path)
    _round(tmp_path, 1)
    with pytest.raises(DataError, match=r"holds no task of exp/svpp/margin/seed0/round000 \(its tasks are of: "
                                        r"exp/svpp/margin/seed0/round001\); export the Label Studio project"):
        read_answers(_drop(run, 0, _export(run, 1, ["Dress"] * 4)), request, CLASSES)
    (run / "round000" / label_studio.PUSHED_FILE).write_text(json.dumps({"project": 7}))
    with pytest.raises(DataError, match="task 0 is from project 1, but this round was sent to project 7"):
        read_answers(_drop(run, 0, _export(run, 0, ["Dress"] * 4)), request, CLASSES)
    minimal = [{"image": "x", "sample_id": "s0_0", "label": "Dress"}]
    with pytest.raises(DataError, match="not a Label Studio task .* Export -> JSON \\(not JSON-MIN"):
        read_answers(_drop(run, 0, minimal), request, CLASSES)
    with pytest.raises(DataError, match=r"round000.json, line 3: not valid JSON"):
        read_answers(_drop(run, 0, '[\n  {"id": 1, "data": {}, "annotations": []},\n  {"id": 2,\n'), request, CLASSES)


def test_an_unreachable_server_or_a_missing_token_is_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"url": f"http://127.0.0.1:{port}", "project": "p", "token_env": "ASVP_TEST_LS_TOKEN",
                "document_root": "."}
    monkeypatch.delenv("ASVP_TEST_LS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"ASVP_TEST_LS_TOKEN \(label_studio.token_env\) is not set: export"):
        label_studio.connect(settings)
    monkeypatch.setenv("ASVP_TEST_LS_TOKEN", "whatever")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"label_studio.url = http://127.0.0.1:{port} did not answer"):
        label_studio.find_project(label_studio.connect(settings), settings, CLASSES, create=False)
    assert time.monotonic() - started < 10


# --- a real server ----------------------------------------------------------------------------


def _server_env(home: Path, data: Path, root: Path) -> dict[str, str]:
    """Offline, loopback, no telemetry; an admin with a known legacy token; local files served."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "HOME": str(home), "LABEL_STUDIO_BASE_DATA_DIR": str(data), "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "", "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_USERNAME": "admin@example.com", "LABEL_STUDIO_PASSWORD": "asvp-test-password",
            "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root)}


def _migrated_data(scratch: Path, root: Path) -> Path:
    """A migrated data folder, made once (`label-studio init`, ~30 s) under .cache/ and copied:
    a start from it takes ~3 s instead of ~30."""
    cache = REPO / ".cache" / f"label-studio-{SERVER_VERSION}-data"
    if not (cache / "label_studio.sqlite3").is_file():
        building = scratch / "init-data"
        init = subprocess.run([str(SERVER_VENV / "bin/label-studio"), "init", "-q"], capture_output=True, text=True,
                              env=_server_env(scratch / "init-home", building, root), timeout=300)
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
        cache.parent.mkdir(exist_ok=True)
        staged = cache.parent / f".{cache.name}.{os.getpid()}"
        shutil.copytree(building, staged)
        try:
            staged.rename(cache)
        except OSError:  # another session made it first
            shutil.rmtree(staged)
    data = scratch / "data"
    shutil.copytree(cache, data)
    return data


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real Label Studio server on a free loopback port; (url, document root). Stopped at the end."""
    binary = SERVER_VENV / "bin/label-studio"
    if not binary.is_file():
        pytest.fail(f"the Label Studio server is not installed at {SERVER_VENV}: run scripts/bootstrap.sh --label-studio-server "
                    f"(or python3 -m venv {SERVER_VENV} && {SERVER_VENV}/bin/pip install "
                    f"label-studio=={SERVER_VERSION} 'sentry-sdk<3')")
    scratch = tmp_path_factory.mktemp("label-studio")
    root = scratch / "root"
    root.mkdir()
    data = _migrated_data(scratch, root)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = scratch / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p",
                                    str(port)], cwd=scratch, env=_server_env(scratch / "home", data, root),
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Label Studio did not answer {url}/health within 120 s; its log ends:\n"
                        + log.read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    yield url, root
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _snakemake(workdir: Path, override: Path, token: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ASVP_TEST_LS_TOKEN"}
    if token is not None:
        env["ASVP_TEST_LS_TOKEN"] = token
    # The jobs run in the workdir: this checkout's package, whatever the venv has installed.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
               "--max-threads", "1", "--configfile", str(MY_IMAGES), str(override)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**env, "PYTHONHASHSEED": "0"})


@pytest.mark.workflow
def test_live_rounds_go_through_a_real_label_studio(server, real_fashion_mnist: Path, default_weights: Path) -> None:
    """The own-images walk-through with Label Studio: round 0 pushed, a wrong token and a
    half-done round stop cleanly, a person's annotations (made through the API) pulled, labelled,
    and round 1 pushed with the proxy's guesses."""
    from label_studio_sdk.client import LabelStudio

    from asvp.data.example import write_example_images

    url, workdir = server  # the workflow runs in the server's document root: the default "." fits
    write_example_images(workdir / "examples/my_images", pool_size=60, test_size=20)
    override = workdir / "live.yaml"
    override.write_text("oracle: label_studio\nmethods: [svpp]\nschedule:\n  budgets: [20, 20]\nevaluation:\n"
                        f"  at: [40]\nlabel_studio:\n  url: {url}\n  project: asvp live test\n"
                        "  token_env: ASVP_TEST_LS_TOKEN\nfeatures: {batch_size: 64}\n")
    run = workdir / "results/my_images/svpp/margin/seed0"
    first = _snakemake(workdir, override, TOKEN)
    assert first.returncode == 0, first.stderr[-4000:]
    pushed = json.loads((run / "round000" / label_studio.PUSHED_FILE).read_text())
    assert len(pushed["task_ids"]) == 20 and not (run / "round000/labelled.csv").exists()

    wrong = _snakemake(workdir, override, "not-the-token")
    assert wrong.returncode != 0 and "refused the token in $ASVP_TEST_LS_TOKEN" in wrong.stderr + wrong.stdout
    assert "not-the-token" not in wrong.stderr + wrong.stdout
    unset = _snakemake(workdir, override, None)
    assert unset.returncode != 0 and "ASVP_TEST_LS_TOKEN (label_studio.token_env) is not set" in unset.stderr + unset.stdout

    client = LabelStudio(base_url=url, api_key=TOKEN)
    tasks = {t.id: t for t in client.tasks.list(project=pushed["project"], fields="all")}
    image = tasks[pushed["task_ids"][0]].data["image"]
    request = urllib.request.Request(url + image, headers={"Authorization": f"Token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as served:  # the local-files storage serves it
        assert served.read().startswith(b"\x89PNG")
    key = pd.read_csv(workdir / "examples/my_images/answer_key.csv", dtype={"sample_id": str})
    truth = dict(zip(key["sample_id"], key["class"]))  # what the person sees in each photo

    def annotate(task_id: int, skip: bool = False) -> None:
        choice = truth[tasks[task_id].data["sample_id"]]
        result = [] if skip else [{"from_name": "label", "to_name": "image", "type": "choices",
                                   "value": {"choices": [choice]}}]
        client.annotations.create(id=task_id, result=result, was_cancelled=skip, lead_time=1.0)

    for task_id in pushed["task_ids"][:-1]:
        annotate(task_id, skip=task_id == pushed["task_ids"][0])
    half = _snakemake(workdir, override, TOKEN)
    assert half.returncode == 0, half.stderr[-4000:]
    assert "18 of 20 tasks of results/my_images/svpp/margin/seed0/round000 annotated (1 skipped" in half.stderr
    assert not (run / "labels/round000.json").exists() and not (run / "round000/labelled.csv").exists()

    annotate(pushed["task_ids"][0])
    annotate(pushed["task_ids"][-1])
    done = _snakemake(workdir, override, TOKEN)
    assert done.returncode == 0, done.stderr[-4000:]
    labelled = pd.read_csv(run / "round000/labelled.csv", dtype={"sample_id": str})
    assert labelled["class_name"].tolist() == [truth[s] for s in labelled["sample_id"]]
    nxt = json.loads((run / "round001" / label_studio.PUSHED_FILE).read_text())
    assert nxt["project"] == pushed["project"] and len(nxt["task_ids"]) == 20
    round1 = [t for t in client.tasks.list(project=pushed["project"], fields="all") if t.id in set(nxt["task_ids"])]
    assert len(round1) == 20 and all(t.data["asvp_request"].endswith("round001") for t in round1)
    guesses = json.loads((run / "round001" / label_studio.TASKS_FILE).read_text())
    assert all(0 < t["predictions"][0]["score"] <= 1 for t in guesses)


def test_a_project_with_other_classes_is_refused(server, monkeypatch: pytest.MonkeyPatch) -> None:
    from label_studio_sdk.client import LabelStudio

    url, _ = server
    LabelStudio(base_url=url, api_key=TOKEN).projects.create(title="other classes",
                                                              label_config=label_studio.labelling_config(["cat", "dog"]))
    monkeypatch.setenv("ASVP_TEST_LS_TOKEN", TOKEN)
    settings = {"url": url, "project": "other classes", "token_env": "ASVP_TEST_LS_TOKEN", "document_root": "."}
    with pytest.raises(ConfigError, match=r"'other classes' \(id \d+\) labels the classes \['cat', 'dog'\] where the "
                                          r"dataset has \['T-shirt/top'"):
        label_studio.find_project(label_studio.connect(settings), settings, CLASSES, create=True)
    fresh = {**settings, "project": "a new title"}
    created = label_studio.find_project(label_studio.connect(settings), fresh, CLASSES, create=True)
    assert label_studio.find_project(label_studio.connect(settings), fresh, CLASSES, create=False) == created
