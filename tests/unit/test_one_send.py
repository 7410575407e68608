"""``tarefa.http.protocol._OneSend``: an answer of a known length leaves in one write; everything
else passes straight through, in order. The transport below records what the request cycle
would have sent on the socket (uvicorn calls ``write``, ``close`` and ``is_closing``)."""

from __future__ import annotations

from tarefa.http.protocol import _OneSend

HEAD = b"HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def sender(method: str = "GET") -> tuple[_OneSend, Recorder]:
    transport = Recorder()
    one = _OneSend(transport)  # type: ignore[arg-type]
    one.begin(method)
    return one, transport


def test_the_head_of_an_answer_of_known_length_waits_for_its_body() -> None:
    one, transport = sender()
    one.write(HEAD)
    assert transport.writes == []
    one.write(b"{}")
    assert transport.writes == [HEAD + b"{}"]
    one.write(b"more")  # after the first body write, everything passes through
    assert transport.writes == [HEAD + b"{}", b"more"]


def test_a_head_request_and_a_streamed_answer_go_out_at_once() -> None:
    for method, head in (("HEAD", HEAD), ("GET", CHUNKED)):
        one, transport = sender(method)
        one.write(head)
        assert transport.writes == [head]  # a HEAD answer has no body; a stream's head opens it
        one.write(b"5\r\nhello\r\n")
        assert transport.writes == [head, b"5\r\nhello\r\n"]


def test_100_continue_passes_and_the_answer_after_it_is_still_one_write() -> None:
    one, transport = sender("POST")
    one.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    one.write(HEAD)
    one.write(b"{}")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD + b"{}"]


def test_closing_sends_a_held_head_first_and_each_request_starts_afresh() -> None:
    one, transport = sender()
    one.write(HEAD)
    assert not one.is_closing()
    one.close()
    assert transport.writes == [HEAD] and transport.closed and one.is_closing()

    one, transport = sender()
    for _ in range(2):  # keep-alive: the next request's cycle begins after the answer is complete
        one.write(HEAD)
        one.write(b"{}")
        one.begin("GET")
    assert transport.writes == [HEAD + b"{}", HEAD + b"{}"]


def test_the_body_of_an_answer_is_never_held_even_if_it_looks_like_a_head() -> None:
    one, transport = sender()
    one.write(HEAD)
    body = b"\r\ncontent-length: 9\r\n\r\n"
    one.write(body)
    one.write(body)
    assert transport.writes == [HEAD + body, body]


def test_a_held_head_is_not_written_to_a_client_that_is_gone() -> None:
    one, transport = sender()
    one.write(HEAD)
    transport.closed = True  # the client went away before the body (uvicorn then sends nothing)
    one.close()
    assert transport.writes == []
