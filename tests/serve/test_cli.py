"""`bertkit serve` wires its flags into the engine, the server config and uvicorn (uvicorn.run is stubbed)."""

import uvicorn

from bertkit.cli.main import main


def test_serve_flags(tiny_dir, monkeypatch):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", str(tiny_dir), "--port", "9123", "--threads", "1", "--no-batching", "--max-texts", "7",
                 "--max-body-bytes", "1000", "--max-batch-tokens", "512", "--max-wait-ms", "2"]) == 0
    app = seen["app"]
    assert (seen["host"], seen["port"], seen["timeout_graceful_shutdown"]) == ("127.0.0.1", 9123, 30)
    c = app.state.config
    assert (c.max_texts_per_request, c.max_body_bytes, c.batching, c.max_batch_tokens, c.max_wait_ms) == \
        (7, 1000, False, 512, 2.0)
    assert app.state.service.encoder.engine.options.max_batch_tokens == 512
    assert list(app.state.batchers) == ["embeddings"]


def test_serve_bad_flags_are_exit_2(tiny_dir, capsys):
    assert main(["serve", str(tiny_dir), "--max-texts", "0"]) == 2
    assert "--max-texts" in capsys.readouterr().err
