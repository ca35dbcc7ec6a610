"""Label Studio as the oracle: its import files for every human request, its JSON export as an
answer, and (with `oracle: label_studio`) a running server fed and read through its SDK.

Every human request also writes `round{r}/label_studio_tasks.json` (one task per image; the
image as a local-files URL relative to `label_studio.document_root`; the selection model's
guess as a pre-annotation) and `round{r}/label_studio_config.xml` (an Image and a Choices
control with the class names). A person can import both by hand and drop the project's JSON
export as `labels/round{r}.json`. With `oracle: label_studio` the request job pushes the tasks
to the server itself and records their ids in `round{r}/label_studio_round.json`; the next
planning pulls the round once every task has an answer and writes the same export file, so the
label step never knows which way the answers came.

An export becomes (line, sample id, class) answers that `asvp.oracle` validates like a CSV
file. Each task carries `asvp_request` (run and round) so a project holding every round (the
live mode puts all rounds of a run in one project) exports without harm: tasks of other rounds
are left out, an export holding none of this round is refused. Choices made about answers:
a skipped task (or one submitted empty) stops the round with the list of them, because a guess
in its place would be a wrong label; several annotations of one task must agree, unless exactly
one is marked ground truth in Label Studio, because "latest wins" would silently drop a
reviewer's disagreement.

Torch-free; the SDK is imported only where a server is talked to.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from asvp.atomic import read_json, write_json, write_text
from asvp.errors import ConfigError, DataError

TASKS_FILE = "label_studio_tasks.json"
CONFIG_FILE = "label_studio_config.xml"
PUSHED_FILE = "label_studio_round.json"  # live mode: the project and task ids of a pushed round
IMAGE_TAG, CHOICES_TAG = "image", "label"  # the names of the labelling config's two controls
TIMEOUT_S = 5.0  # a server that does not answer within this stops the run with a message


# --- files -----------------------------------------------------------------------------------


def request_key(run_dir: str | Path, round_index: int) -> str:
    """Which run and round a task belongs to (experiment/method/strategy/seed, round): stored in
    every task so an export of another run or round is recognised."""
    return "/".join([*Path(run_dir).parts[-4:], f"round{round_index:03d}"])


def labelling_config(classes: Sequence[str]) -> str:
    """The project's labelling interface: the image and one single choice among the classes."""
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in classes)
    return (f'<View>\n  <Image name="{IMAGE_TAG}" value="$image"/>\n'
            f'  <Choices name="{CHOICES_TAG}" toName="{IMAGE_TAG}" choice="single" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def config_classes(label_config: str) -> list[str] | None:
    """The class names of a labelling config's Choices control, or None if it has none."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError:
        return None
    control = next((c for c in root.iter("Choices") if c.get("name") == CHOICES_TAG), None)
    return None if control is None else [c.get("value", "") for c in control.iter("Choice")]


def document_root(setting: str) -> Path:
    """label_studio.document_root as an absolute folder (relative: to the working directory)."""
    return Path(setting).expanduser().resolve()


def local_files_url(image_path: str | Path, root: Path) -> str:
    """The URL Label Studio serves a local file under: its path relative to the document root."""
    path = Path(image_path).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"label_studio.document_root = {root} does not contain the image {path}: set it to a folder "
                          "above both the results and the dataset's images (and start Label Studio with "
                          "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to the same folder)")
    return "/data/local-files/?d=" + quote(path.relative_to(root).as_posix(), safe="/")


def make_tasks(request: pd.DataFrame, classes: Sequence[str], confidence: np.ndarray | None, root: Path,
               key: str) -> list[dict[str, Any]]:
    """One import task per row of to_label.csv; the predicted class (with the model's probability
    for it, when known) becomes a pre-annotation the person confirms or corrects."""
    tasks = []
    for k, row in enumerate(request.itertuples(index=False)):
        task: dict[str, Any] = {"data": {"image": local_files_url(row.image_path, root), "sample_id": str(row.sample_id),
                                         "pool_index": int(row.pool_index), "asvp_request": key}}
        if row.predicted_class:
            score = float(confidence[k]) if confidence is not None else None
            task["predictions"] = [{
                "model_version": "asvp selection model",
                **({"score": round(score, 6)} if score is not None else {}),
                "result": [{"from_name": CHOICES_TAG, "to_name": IMAGE_TAG, "type": "choices",
                            "value": {"choices": [row.predicted_class]}}],
            }]
        tasks.append(task)
    return tasks


def write_files(request: pd.DataFrame, classes: Sequence[str], confidence: np.ndarray | None, round_dir: str | Path,
                root: Path) -> list[dict[str, Any]]:
    """Write label_studio_tasks.json and label_studio_config.xml into the round folder."""
    round_dir = Path(round_dir)
    key = request_key(round_dir.parent, int(round_dir.name.removeprefix("round")))
    tasks = make_tasks(request, classes, confidence, root, key)
    write_text(round_dir / CONFIG_FILE, labelling_config(classes))
    write_json(round_dir / TASKS_FILE, tasks)
    return tasks


# --- an export as answers ----------------------------------------------------------------------


def _tasks_with_lines(path: Path) -> list[tuple[int, Any]]:
    """(line where it starts, task) for each element of the export's top-level list."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; export the project again as JSON from Label Studio") from None
    decoder = json.JSONDecoder()
    at = len(text) - len(text.lstrip())
    if not text[at:at + 1] == "[":
        raise DataError(f"{path}: not a Label Studio JSON export (a list of tasks); in Label Studio use Export -> JSON "
                        "(not JSON-MIN or CSV)")
    at += 1
    tasks = []
    try:
        while True:
            while text[at:at + 1].isspace() or text[at:at + 1] == ",":
                at += 1
            if text[at:at + 1] == "]":
                return tasks
            task, end = decoder.raw_decode(text, at)
            tasks.append((text.count("\n", 0, at) + 1, task))
            at = end
    except (json.JSONDecodeError, IndexError) as error:
        line = text.count("\n", 0, at) + 1
        raise DataError(f"{path}, line {line}: not valid JSON ({error}); export the project again from Label Studio "
                        "instead of editing the file") from None


def _chosen_class(annotation: dict[str, Any]) -> str | None:
    """The class an annotation chose (None when it chose nothing)."""
    for item in annotation.get("result") or []:
        if item.get("type") == "choices":
            choices = item.get("value", {}).get("choices") or []
            return choices[0] if len(choices) == 1 else None
    return None


def export_answers(path: str | Path, project: int | None = None) -> list[tuple[int, str, str]]:
    """(line, sample id, class name) of each task of round r in a Label Studio JSON export at
    `<run>/labels/round{r:03d}.json`, for asvp.oracle's validation.

    project: the id of the project the round was pushed to (live mode), to refuse another one's
    export. Unanswered and skipped tasks, and disagreeing annotations, stop here with the list
    of them; unknown classes, ids not requested and missing images are left to the validation.
    """
    path = Path(path)
    run_dir, round_index = path.parent.parent, int(path.stem.removeprefix("round"))
    key = request_key(run_dir, round_index)
    entries = _tasks_with_lines(path)
    if not entries:
        raise DataError(f"{path} holds no task: annotate the round's tasks in Label Studio, then export again")
    pairs, unanswered, disagreements, keys_seen = [], [], [], set()
    for line, task in entries:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or "annotations" not in task:
            raise DataError(f"{path}, line {line}: not a Label Studio task (no data and annotations); export with "
                            "Export -> JSON (not JSON-MIN or CSV)")
        task_key = task["data"].get("asvp_request")
        keys_seen.add(task_key)
        if task_key != key:
            continue  # another round of the same project
        if project is not None and task.get("project") != project:
            raise DataError(f"{path}, line {line}: task {task.get('id')} is from project {task.get('project')}, but "
                            f"this round was sent to project {project}; export that project")
        sample_id = str(task["data"].get("sample_id", ""))
        answered = [a for a in task["annotations"] if not a.get("was_cancelled") and _chosen_class(a) is not None]
        if not answered:
            unanswered.append(f"{sample_id} (task {task.get('id')})")
            continue
        chosen = {_chosen_class(a) for a in answered}
        if len(chosen) > 1:
            truth = [a for a in answered if a.get("ground_truth")]
            if len(truth) != 1:
                disagreements.append(f"{sample_id} (task {task.get('id')}: {', '.join(sorted(map(repr, chosen)))})")
                continue
            chosen = {_chosen_class(truth[0])}
        pairs.append((line, sample_id, chosen.pop()))
    if len(pairs) + len(unanswered) + len(disagreements) == 0:
        found = ", ".join(sorted(map(str, keys_seen)))
        raise DataError(f"{path} holds no task of {key} (its tasks are of: {found}); export the Label Studio project "
                        f"that holds this round's tasks (imported from round{round_index:03d}/{TASKS_FILE})")
    if unanswered:
        raise DataError(f"{path}: {len(unanswered)} task(s) skipped or without a class: {_some(unanswered)}; "
                        "choose a class for each in Label Studio, then export again (a skipped image cannot be "
                        "left out: the round's selection is fixed)")
    if disagreements:
        raise DataError(f"{path}: annotations disagree on {len(disagreements)} task(s): {_some(disagreements)}; "
                        "delete the wrong annotation or mark the right one as ground truth in Label Studio, "
                        "then export again")
    return pairs


def _some(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def pushed_project(answers_json: str | Path) -> int | None:
    """The project a round was pushed to (live mode), from the round folder beside labels/."""
    path = Path(answers_json)
    pushed = path.parent.parent / path.stem / PUSHED_FILE
    return int(read_json(pushed)["project"]) if pushed.is_file() else None


# --- a running server --------------------------------------------------------------------------


def connect(settings: dict[str, Any]) -> Any:
    """An SDK client for label_studio.url with the token from the environment variable named by
    label_studio.token_env (the token itself is never in the config nor printed)."""
    variable = settings["token_env"]
    token = os.environ.get(variable, "")
    if not token:
        raise ConfigError(f"the environment variable {variable} (label_studio.token_env) is not set: export "
                          f"{variable}=<your token from Label Studio's Account & Settings> and run again")
    try:
        from label_studio_sdk.client import LabelStudio
    except ImportError:
        raise ConfigError("oracle: label_studio needs the package label-studio-sdk: run scripts/bootstrap.sh (it "
                          "installs it into the project's venv) or pip install label-studio-sdk==2.1.2") from None
    return LabelStudio(base_url=settings["url"].rstrip("/"), api_key=token, timeout=TIMEOUT_S, max_retries=0)


def _call(settings: dict[str, Any], what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the server; turn its failures into one message naming the setting and the fix."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    url = settings["url"]
    try:
        return function(*args, **kwargs)
    except (httpx.TransportError, OSError) as error:
        raise ConfigError(f"Label Studio at label_studio.url = {url} did not answer ({type(error).__name__}) while "
                          f"trying to {what}: start it (label-studio start) or fix label_studio.url") from None
    except ApiError as error:
        if error.status_code in (401, 403):
            raise ConfigError(f"Label Studio at {url} refused the token in ${settings['token_env']} "
                              f"(label_studio.token_env; HTTP {error.status_code}): put a valid token of that server "
                              "(Account & Settings) in the variable") from None
        raise ConfigError(f"Label Studio at {url} answered HTTP {error.status_code} while trying to {what}: "
                          f"{str(error.body)[:300]}") from None


def find_project(client: Any, settings: dict[str, Any], classes: Sequence[str], create: bool) -> int | None:
    """The id of label_studio.project (an id, or a title created with our labelling config when
    absent and `create`), after checking its classes are exactly the declared ones."""
    wanted = settings["project"]
    if isinstance(wanted, int) or str(wanted).isdigit():
        project = _call(settings, f"read project {wanted}", client.projects.get, id=int(wanted))
    else:
        matches = [p for p in _call(settings, "list projects", client.projects.list, title=str(wanted))
                   if p.title == wanted]
        if len(matches) > 1:
            raise ConfigError(f"label_studio.project = {wanted!r}: {len(matches)} projects have this title on "
                              f"{settings['url']}; give the id of the right one ({', '.join(str(p.id) for p in matches)})")
        if not matches:
            if not create:
                return None
            created = _call(settings, f"create project {wanted!r}", client.projects.create, title=str(wanted),
                            label_config=labelling_config(classes))
            return int(created.id)
        project = _call(settings, f"read project {wanted!r}", client.projects.get, id=int(matches[0].id))
    found = config_classes(project.label_config or "")
    if found is None or sorted(found) != sorted(classes):
        raise ConfigError(f"label_studio.project = {wanted!r} (id {project.id}) labels the classes {found} where the "
                          f"dataset has {list(classes)}: use another project (a new title is created for you) or set "
                          f"its labelling config to round*/{CONFIG_FILE}")
    return int(project.id)


def _ensure_storage(client: Any, settings: dict[str, Any], project: int, folder: Path) -> None:
    """A local-files import storage covering `folder`: without one Label Studio serves none of
    the images (404)."""
    storages = _call(settings, "list local storages", client.import_storage.local.list, project=project)
    if any(s.path and folder.is_relative_to(Path(s.path)) for s in storages):
        return
    _call(settings, f"add local storage {folder}", client.import_storage.local.create, project=project,
          path=str(folder), title=f"asvp-flow {folder.name}", use_blob_urls=True)


def push_round(settings: dict[str, Any], round_dir: str | Path, tasks: list[dict[str, Any]], classes: Sequence[str],
               image_paths: Sequence[str]) -> dict[str, Any]:
    """Send a round's tasks to the server (once: a rerun of the request finds them recorded) and
    record the project and task ids in round{r}/label_studio_round.json."""
    round_dir = Path(round_dir)
    record_path = round_dir / PUSHED_FILE
    sample_ids = [t["data"]["sample_id"] for t in tasks]
    if record_path.is_file():
        record = read_json(record_path)
        if record.get("sample_ids") == sample_ids and record.get("url") == settings["url"]:
            return record
    client = connect(settings)
    project = find_project(client, settings, classes, create=True)
    run_dir = round_dir.parent.resolve()
    images = [Path(p).resolve() for p in image_paths]
    folder = run_dir if all(p.is_relative_to(run_dir) for p in images) else Path(os.path.commonpath(
        [p.parent for p in images]))
    _ensure_storage(client, settings, project, folder)
    imported = _call(settings, "import the round's tasks", client.projects.import_tasks, id=project, request=tasks,
                     return_task_ids=True)
    record = {"url": settings["url"], "project": project, "task_ids": [int(i) for i in imported.task_ids],
              "sample_ids": sample_ids}
    write_json(record_path, record)
    return record


def pull_round(settings: dict[str, Any], run_dir: str | Path, round_index: int, answers_json: str | Path) -> bool:
    """Fetch a pushed round's annotations; when every task has a class, write the project's
    export of those tasks to `answers_json` (atomically, only when it changed) and return True.
    Otherwise print how many are done and return False."""
    record = read_json(Path(run_dir) / f"round{round_index:03d}" / PUSHED_FILE)
    client = connect(settings)
    exported = json.loads(_call(settings, "export the round's annotations", lambda: b"".join(
        client.projects.exports.download_sync(record["project"], export_type="JSON", download_all_tasks=True,
                                              ids=record["task_ids"]))))
    ours = set(record["task_ids"])
    tasks = sorted((t for t in exported if t.get("id") in ours), key=lambda t: record["task_ids"].index(t["id"]))
    done = [t for t in tasks if any(not a.get("was_cancelled") and _chosen_class(a) for a in t.get("annotations", []))]
    skipped = [t for t in tasks if t not in done and any(a.get("was_cancelled") for a in t.get("annotations", []))]
    if len(done) < len(record["task_ids"]):
        note = f" ({len(skipped)} skipped: give those a class too)" if skipped else ""
        print(f"asvp-flow: Label Studio project {record['project']} at {record['url']}: {len(done)} of "
              f"{len(record['task_ids'])} tasks of {run_dir}/round{round_index:03d} annotated{note}; "
              "run again once all are", file=sys.stderr)
        return False
    text = json.dumps(tasks, indent=2) + "\n"
    answers_json = Path(answers_json)
    if not answers_json.is_file() or answers_json.read_text() != text:
        write_text(answers_json, text)
    return True
