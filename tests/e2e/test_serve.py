"""`tlcli serve` end to end: a real server process on a free port, a real HTTP client (urllib).

The answers equal `tlcli predict`'s JSONL rows for the same files, under 8 concurrent clients;
bad requests get a 4xx with a message saying what to send, and the server answers on after them.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import TINY, compose_fit, make_imagefolder, make_tiny_bert
from tlcli.cli import main
from tlcli.commands import predict as predict_verb
from tlcli.commands.fit import fit

pytest.importorskip("fastapi", reason="tlcli serve needs the serve extra: pip install 'tlcli[serve]'")
pytest.importorskip("uvicorn")

ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, parsed JSON body) of one request; 4xx/5xx are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def multipart(files: list[tuple[str, str, bytes]]) -> tuple[bytes, dict]:
    """A multipart/form-data body of (field, filename, bytes) parts, as curl -F would send."""
    boundary = uuid.uuid4().hex
    parts = []
    for field, filename, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def as_json(doc) -> tuple[bytes, dict]:
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run dir, data root) of a TINY test_resnet fit at 32 px."""
    tmp = tmp_path_factory.mktemp("serve")
    root = make_imagefolder(tmp / "data", splits={"train": 6, "test": 4})
    fit(compose_fit([*TINY, "data=imagefolder", f"data.root={root}", "trainer.max_epochs=1"], tmp / "run"))
    return tmp / "run", root


@contextlib.contextmanager
def serving(ckpt: Path, folder: Path, *overrides: str):
    """The base URL of a `tlcli serve` process on a free port, up once /health answers; stopped after."""
    port = free_port()
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "tlcli.cli", "serve", f"ckpt={ckpt}", f"port={port}", *overrides]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, f"hydra.run.dir={folder / 'run'}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tlcli serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if call(url + "/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tlcli serve did not answer /health in 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """The base URL of `tlcli serve` running the trained checkpoint in its own process."""
    with serving(trained[0], tmp_path_factory.mktemp("server"), "max_bytes=50000", "max_instances=16") as url:
        yield url


@pytest.fixture(scope="module")
def predicted(trained, tmp_path_factory):
    """`tlcli predict`'s JSONL rows for the test images, by file path."""
    out = tmp_path_factory.mktemp("predict")
    overrides = [f"ckpt={trained[0]}", f"input={trained[1] / 'test'}", f"output={out / 'p.jsonl'}"]
    predict_verb.predict(compose_fit([*overrides, "progress_bar=false", "num_workers=0"], out, config_name="predict"))
    rows = [json.loads(line) for line in (out / "p.jsonl").read_text().splitlines()]
    return {row["input"]: row for row in rows}


def same_row(got: dict, expected: dict) -> None:
    assert got["pred"] == expected["pred"]
    assert [t["class"] for t in got["top"]] == [t["class"] for t in expected["top"]]
    assert got["probs"].keys() == expected["probs"].keys()
    for c, p in expected["probs"].items():
        assert got["probs"][c] == pytest.approx(p, abs=ATOL)
    assert got["score"] == pytest.approx(expected["score"], abs=ATOL)


def test_health_and_metadata(server, trained):
    status, health = call(server + "/health")
    assert status == 200 and health["status"] == "ok" and health["task"] == "Classification"
    status, meta = call(server + "/metadata")
    assert status == 200
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["scores"] == "softmax" and meta["top_k"] == 3
    assert meta["input"]["modality"] == "image" and meta["input"]["input_size"] == [3, 32, 32]
    assert meta["input"]["mean"] == [0.5, 0.5, 0.5] and meta["input"]["resize"] == 33
    assert meta["limits"] == {"max_bytes": 50000, "max_instances": 16}
    assert meta["metrics"] == json.loads((trained[0] / "metrics.json").read_text())


def test_concurrent_requests_agree_with_predict(server, predicted):
    paths = sorted(predicted)
    assert len(paths) == 12

    def one(k: int) -> list[tuple[str, dict]]:
        """Client k: one upload, one base64 JSON request and one batch, each of other files."""
        a, b, c = (paths[(k + j) % len(paths)] for j in (0, 4, 8))
        out = []
        status, answer = call(server + "/predict", *multipart([("file", Path(a).name, Path(a).read_bytes())]))
        assert status == 200, answer
        out.append((a, answer["predictions"][0]))
        image = base64.b64encode(Path(b).read_bytes()).decode()
        status, answer = call(server + "/predict", *as_json({"image": image, "name": b}))
        assert status == 200, answer
        out.append((b, answer["predictions"][0]))
        batch = [{"image": base64.b64encode(Path(p).read_bytes()).decode(), "name": p} for p in (c, a)]
        status, answer = call(server + "/predict", *as_json({"instances": batch}))
        assert status == 200, answer
        out += list(zip((c, a), answer["predictions"]))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [row for rows in pool.map(one, range(8)) for row in rows]
    assert len(answers) == 32
    for path, row in answers:
        same_row(row, predicted[path])
    # an upload is named by its file name; JSON inputs by their "name", else their place in the request
    assert answers[0][1]["input"] == Path(answers[0][0]).name and answers[1][1]["input"] == answers[1][0]


def test_bad_requests_get_4xx_with_what_to_send_and_the_server_stays_up(server, trained, tmp_path):
    png = (trained[1] / "test" / "dog" / "0.png").read_bytes()
    b64 = base64.b64encode(png).decode()
    bad = [
        (multipart([("file", "notes.txt", b"no image")]), 400, "cannot read image notes.txt (UnidentifiedImageError"),
        (multipart([("file", "half.png", png[: len(png) // 2])]), 400, "half.png"),
        (multipart([("image", "a.png", png)]), 400, 'no field "file" in the upload (fields: image)'),
        (multipart([("file", "big.png", b"\0" * 60000)]), 413, "more than max_bytes=50000"),
        ((b'{"image": "abc', {"Content-Type": "application/json"}), 400, "malformed JSON (Unterminated string"),
        (as_json({"imge": b64}), 400, "unknown field 'imge'. Did you mean: image?"),
        (as_json({"image": "%%%"}), 400, '"image" is not valid base64'),
        (as_json({"text": "a cat"}), 400, "this model reads images; send a multipart upload"),
        (as_json([b64]), 400, "the JSON body must be an object, not list"),
        (as_json({"instances": [{"image": b64}] * 17}), 413, "17 inputs in one request, more than max_instances=16"),
        ((png, {"Content-Type": "image/png"}), 415, "content type image/png is not read here"),
    ]
    for (body, headers), status, message in bad:
        got, answer = call(server + "/predict", body, headers)
        assert (got, answer["status"]) == (status, status), answer
        assert message in answer["error"], answer["error"]
    assert call(server + "/predict", method="GET")[0] == 405
    status, answer = call(server + "/nowhere")
    assert status == 404 and "POST /predict, GET /health, GET /metadata" in answer["error"]
    # still serving, and still right
    assert call(server + "/health")[0] == 200
    status, answer = call(server + "/predict", *multipart([("file", "0.png", png)]))
    assert status == 200 and answer["predictions"][0]["input"] == "0.png"


def exit_code(args: list[str]) -> int:
    """`tlcli ARGS`'s exit code, in process (an error inside the verb leaves Hydra as SystemExit)."""
    try:
        return main(args)
    except SystemExit as exc:
        return exc.code


def test_a_missing_extra_or_a_taken_port_stops_before_the_model_loads(trained, monkeypatch, capsys):
    from tlcli.commands import serve as serve_verb

    real = serve_verb.is_installed
    monkeypatch.setattr(serve_verb, "is_installed", lambda module: module != "uvicorn" and real(module))
    runs = trained[0].parent
    assert exit_code(["serve", f"ckpt={trained[0]}", f"hydra.run.dir={runs / 's1'}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "tlcli serve needs the uvicorn package, which is not installed: pip install 'tlcli[serve]'" in err
    monkeypatch.setattr(serve_verb, "is_installed", real)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", f"ckpt={trained[0]}", f"port={port}"]
        assert exit_code([*args, "workers=0", "max_bytes=-1", f"hydra.run.dir={runs / 's2'}"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        # every setting problem at once, before the port is tried
        assert "workers=0 must be a positive integer" in err and "max_bytes=-1 must be a positive integer" in err
        assert exit_code([*args, f"hydra.run.dir={runs / 's3'}"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"port={port} on host=127.0.0.1 cannot be used (Address already in use)" in err


@pytest.fixture(scope="module")
def text_regression_server(tmp_path_factory):
    """(base URL, run dir) of a tiny BERT regression checkpoint served by the app in a thread of this process."""
    import threading

    import uvicorn

    from tlcli.serving.app import Settings, create_app
    from tlcli.serving.predictor import Predictor

    tmp = tmp_path_factory.mktemp("serve_text")
    rows = [
        [f"a {w} film", float(k)] for k, w in enumerate(["awful", "dull", "fine", "good", "great"]) for _ in range(4)
    ]
    with open(tmp / "reviews.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "stars"], *rows])
    overrides = ["backbone=hf", "backbone.name=tiny-bert", f"backbone.weights={make_tiny_bert(tmp / 'bert')}"]
    overrides += ["task=regression", "data=csv", f"data.train_csv={tmp / 'reviews.csv'}", "data.label_column=stars"]
    overrides += ["data.num_workers=0", "trainer.max_epochs=1", "callbacks.progress_bar=null", "baseline=false"]
    fit(compose_fit(overrides, tmp / "run"))
    app = create_app(Predictor(str(tmp / "run")), Settings(ckpt=str(tmp / "run")))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the in-process server did not start"
        time.sleep(0.1)
    yield url, tmp / "run"
    server.should_exit = True
    thread.join(timeout=30)


def test_text_regression_rows_are_predicts_rows(text_regression_server, tmp_path):
    url, run = text_regression_server
    texts = ["a great film", "an awful, dull film that goes on and on"]
    with open(tmp_path / "new.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in texts]])
    overrides = [f"ckpt={run}", f"input={tmp_path / 'new.csv'}", f"output={tmp_path / 'p.jsonl'}", "progress_bar=false"]
    predict_verb.predict(compose_fit([*overrides, "num_workers=0"], tmp_path, config_name="predict"))
    expected = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    status, answer = call(url + "/predict", *as_json({"instances": [texts[0], {"text": texts[1]}]}))
    assert status == 200, answer
    got = answer["predictions"]
    assert [r["input"] for r in got] == texts and [set(r) for r in got] == [{"input", "pred", "values"}] * 2
    for row, want in zip(got, expected):
        assert row["pred"] == pytest.approx(want["pred"], abs=ATOL)
        assert row["values"]["stars"] == pytest.approx(want["values"]["stars"], abs=ATOL)
    status, meta = call(url + "/metadata")
    assert meta["task"] == "Regression" and meta["targets"] == ["stars"] and meta["input"]["modality"] == "text"
    status, answer = call(url + "/predict", *as_json({"image": base64.b64encode(b"x").decode()}))
    assert status == 400 and answer["error"] == 'image: this model reads text; send JSON {"text": "..."}'
    status, answer = call(url + "/predict", *multipart([("file", "a.txt", b"a great film")]))
    assert status == 400 and "this model reads text, not uploads" in answer["error"]
    status, answer = call(url + "/predict", *as_json({"text": "   "}))
    assert status == 400 and answer["error"] == 'the JSON body: "text" is empty'


@pytest.mark.slow
def test_two_workers_answer_alike_without_nagle_delays(trained, predicted, tmp_path):
    """workers=2: uvicorn's own listener would leave TCP_NODELAY off (Kludex/uvicorn#3149), and each
    keep-alive request after the first would wait ~40 ms for a delayed ACK; tlcli binds its own."""
    import http.client

    with serving(trained[0], tmp_path, "workers=2", "access_log=false") as url:
        path = sorted(predicted)[0]
        status, answer = call(url + "/predict", *multipart([("file", "x.png", Path(path).read_bytes())]))
        assert status == 200
        same_row(answer["predictions"][0], predicted[path])
        conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        seconds = []
        for _ in range(21):
            start = time.perf_counter()
            conn.request("GET", "/health")
            conn.getresponse().read()
            seconds.append(time.perf_counter() - start)
        conn.close()
        assert sorted(seconds)[10] < 0.025, f"median keep-alive /health took {sorted(seconds)[10] * 1000:.0f} ms"
