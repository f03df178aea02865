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


def test_serve_limits_key_and_warnings(tiny_dir, monkeypatch, caplog):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("BERTKIT_API_KEY", "from-env")
    assert main(["serve", str(tiny_dir), "--threads", "1", "--max-request-tokens", "999", "--slice-tokens", "64",
                 "--max-queue-requests", "7", "--max-queue-tokens", "5000", "--request-timeout", "9",
                 "--body-timeout", "3", "--header-timeout", "2", "--keep-alive", "4", "--shutdown-grace", "6",
                 "--open-paths", "/healthz", "--accept-any-model"]) == 0
    c = seen["app"].state.config
    assert (c.max_request_tokens, c.slice_tokens, c.max_queue_requests, c.max_queue_tokens, c.request_timeout_s,
            c.body_timeout_s, c.header_timeout_s, c.keep_alive_s, c.shutdown_grace_s) == \
        (999, 64, 7, 5000, 9, 3, 2, 4, 6)
    assert (c.api_key, c.open_paths, c.accept_any_model) == ("from-env", ("/healthz",), True)
    assert seen["timeout_keep_alive"] == 4 and seen["timeout_graceful_shutdown"] == 16  # grace + 10 s margin
    assert seen["http"].__name__ == "HeaderTimeoutProtocol"
    assert seen["app"].state.batchers["embeddings"].slice_tokens == 64

    monkeypatch.delenv("BERTKIT_API_KEY")
    caplog.clear()
    assert main(["serve", str(tiny_dir), "--threads", "1", "--host", "0.0.0.0"]) == 0
    assert "without an API key" in caplog.text and seen["app"].state.config.api_key is None
    caplog.clear()
    assert main(["serve", str(tiny_dir), "--threads", "1", "--host", "0.0.0.0", "--api-key", "k"]) == 0
    assert "without an API key" not in caplog.text and seen["app"].state.config.api_key == "k"
    caplog.clear()
    assert main(["serve", str(tiny_dir), "--threads", "1", "--host", "::1"]) == 0
    assert "without an API key" not in caplog.text  # loopback


def test_serve_bad_limits_are_exit_2(tiny_dir, capsys):
    assert main(["serve", str(tiny_dir), "--request-timeout", "0"]) == 2
    assert "request_timeout_s must be > 0" in capsys.readouterr().err
