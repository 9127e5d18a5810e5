from service.metrics import Metrics, size_label


def test_size_labels_are_bounded() -> None:
    assert size_label(0.5) == "0.50" and size_label(0.123456) == "0.12" and size_label(0.0) == "0.00"


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # a shared registry would raise "Duplicated timeseries"
    a.requests.labels("/v1/classify", "0.50", "200").inc()
    body, content_type = a.render()
    assert b'dynsparse_requests_total{code="200",endpoint="/v1/classify",size="0.50"} 1.0' in body
    assert b"dynsparse_requests_total{" not in b.render()[0] and content_type.startswith("text/plain")
    for name in (
        b"dynsparse_queue_seconds",
        b"dynsparse_inference_seconds",
        b"dynsparse_batch_size",
        b"dynsparse_errors_total",
        b"dynsparse_queue_depth",
    ):
        assert b"# TYPE " + name in body
