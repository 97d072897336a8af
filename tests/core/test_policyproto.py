"""Reading Postfix policy requests and choosing the action: pure, fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eximauthd.core.decision import Decision, Reason
from eximauthd.core.policyproto import (
    DEFER_TEXT,
    DUNNO,
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    RATE_TEXT,
    REJECT_TEXT,
    Malformed,
    PolicyReader,
    PolicyRequest,
    format_action,
    policy_action,
)

# What Postfix 3.7 sends at RCPT TO for an authenticated client, in its order.
POSTFIX_37 = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=127.0.0.1\nclient_name=localhost\nclient_port=41234\n"
    b"reverse_client_name=localhost\nserver_address=127.0.0.1\nserver_port=2525\n"
    b"helo_name=client.test\nsender=alice@example.test\nrecipient=someone@remote.test\n"
    b"recipient_count=0\nqueue_id=\ninstance=1a2b.6565f3c1.a4c2d.0\nsize=0\netrn_domain=\n"
    b"stress=\nsasl_method=PLAIN\nsasl_username=alice@example.test\nsasl_sender=\n"
    b"ccert_subject=\nccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\n"
    b"encryption_protocol=\nencryption_cipher=\nencryption_keysize=0\npolicy_context=\n\n"
)


def read_all(data: bytes, chunk: int = 0) -> list[PolicyRequest | Malformed]:
    reader = PolicyReader()
    if not chunk:
        return reader.feed(data)
    out: list[PolicyRequest | Malformed] = []
    for start in range(0, len(data), chunk):
        out += reader.feed(data[start:start + chunk])
    return out


class TestPolicyReader:
    @pytest.mark.parametrize("chunk", [0, 1, 7, 100], ids=["whole", "bytewise", "7", "100"])
    def test_postfix_request_is_read_whatever_the_chunks(self, chunk: int) -> None:
        """Postfix's attribute set gives one request with the used attributes, split or not."""
        [request] = read_all(POSTFIX_37, chunk)
        assert isinstance(request, PolicyRequest)
        assert request.get("sasl_username") == "alice@example.test"
        assert request.get("instance") == "1a2b.6565f3c1.a4c2d.0"
        assert request.get("recipient") == "someone@remote.test"
        assert request.authenticated
        assert "helo_name" not in request.attributes  # unused names are not kept

    def test_many_requests_on_one_connection(self) -> None:
        """Each empty line ends one request; stray empty lines between them are no request."""
        requests = read_all(POSTFIX_37 + b"\n\n" + POSTFIX_37 * 3)
        assert len(requests) == 4
        assert all(isinstance(r, PolicyRequest) for r in requests)

    def test_value_split_at_first_equals_sign(self) -> None:
        """A value may hold '='; only the first one separates the name."""
        [request] = read_all(b"request=smtpd_access_policy\nsender=a=b@example.test\n\n")
        assert isinstance(request, PolicyRequest)
        assert request.get("sender") == "a=b@example.test"

    def test_empty_sasl_username_is_unauthenticated(self) -> None:
        """Postfix sends sasl_username= empty for a client that did not log in."""
        [request] = read_all(POSTFIX_37.replace(b"sasl_username=alice@example.test",
                                                b"sasl_username="))
        assert isinstance(request, PolicyRequest)
        assert not request.authenticated

    @pytest.mark.parametrize(("data", "reason"), [
        (b"request=smtpd_access_policy\nno equals sign\n\n", "not-name-value"),
        (b"request=smtpd_access_policy\n=value\n\n", "not-name-value"),
        (b"request=smtpd_access_policy\nsender=a@b\nsender=c@d\n\n", "repeated-attribute"),
        (b"request=smtpd_access_policy\nsender=\xff@b\n\n", "not-utf8"),
        (b"request=smtpd_access_policy\nsender=a\tb@c\n\n", "control-character"),
        (b"request=smtpd_access_policy\nsender=a\rb@c\n\n", "control-character"),
        (b"request=other\nsender=a@b\n\n", "not-access-policy"),
        (b"sender=a@b\n\n", "not-access-policy"),
        (b"request=smtpd_access_policy\n\xffname=x\n\n", "bad-name"),
        (b"request=smtpd_access_policy\nccert_subject=" + b"x" * MAX_LINE_BYTES + b"\n\n",
         "line-too-long"),
        (b"request=smtpd_access_policy\n" + b"a=b\n" * MAX_ATTRIBUTES + b"\n",
         "too-many-attributes"),
        (b"request=smtpd_access_policy\n" + (b"x=" + b"y" * 4000 + b"\n") * 9 + b"\n",
         "request-too-long"),
    ], ids=["no-equals", "no-name", "repeated", "not-utf8", "tab", "cr", "other-request",
            "no-request", "bad-name", "long-line", "many-attributes", "big-request"])
    def test_unreadable_request_is_malformed(self, data: bytes, reason: str) -> None:
        """A request that breaks the protocol or a cap is one Malformed, named."""
        assert read_all(data) == [Malformed(reason)]

    def test_malformed_request_does_not_spoil_the_next(self) -> None:
        """After a request over the caps, the next one on the connection reads normally."""
        huge = b"request=smtpd_access_policy\nsender=" + b"x" * (10 * MAX_LINE_BYTES) + b"\n\n"
        first, second = read_all(huge + POSTFIX_37, chunk=1000)
        assert first == Malformed("line-too-long")
        assert isinstance(second, PolicyRequest)

    def test_request_without_its_empty_line_is_not_answered(self) -> None:
        """No empty line, no request: the reader waits and says a request is under way."""
        reader = PolicyReader()
        assert reader.feed(POSTFIX_37[:-1]) == []
        assert reader.mid_request
        assert reader.feed(b"\n") != []
        assert not reader.mid_request

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"\n\n", b"=", POSTFIX_37]),
                    max_size=30))
    def test_any_bytes_give_only_requests_or_malformed(self, pieces: list[bytes]) -> None:
        """Whatever arrives, the reader returns requests or Malformed, never raises, and keeps
        no more than a line's cap in its buffer."""
        reader = PolicyReader()
        for piece in pieces:
            for item in reader.feed(piece):
                assert isinstance(item, PolicyRequest | Malformed)
                if isinstance(item, PolicyRequest):
                    assert item.get("request") == "smtpd_access_policy"
            assert len(reader._partial) <= MAX_LINE_BYTES

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from([
        b"request=other\n", b"sender=a@b\n", b"sender=\xff@b\n", b"sender=a\tb\n",
        b"recipient=r=s@t\n", b"senderx=1\n", b"x=sender=1\n", b"=v\n", b"no equals\n",
        b"\xffname=x\n", b"name\xc3\xa9=x\n", b"instance=\xc3\xa9\n", b"\n", b"a=b\n" * 60,
        b"x=" + b"y" * 2000 + b"\n", b"x=" + b"y" * MAX_LINE_BYTES + b"\n", b"sasl_username=\n",
        b"s", b"instance=i\n", POSTFIX_37]), max_size=6)), max_size=6))
    @example([(True, [b"a=b\n" * 60, b"a=b\n" * 60])])  # too many attributes, short lines
    def test_whole_requests_read_as_line_by_line(
            self, requests: list[tuple[bool, list[bytes]]]) -> None:
        """Requests arriving whole (read at once when well-formed) give exactly what the same
        bytes give one at a time (always read line by line)."""
        data = b"".join((b"request=smtpd_access_policy\n" if header else b"") + b"".join(lines)
                        + b"\n" for header, lines in requests)
        assert read_all(data) == read_all(data, chunk=1)

    def test_caps_bound_a_request(self) -> None:
        """The caps are consistent: a full request of capped lines exceeds the request cap."""
        assert MAX_LINE_BYTES * MAX_ATTRIBUTES > MAX_REQUEST_BYTES


class TestPolicyAction:
    @pytest.mark.parametrize(("decision", "action"), [
        (Decision.yes(Reason.SAME_ADDRESS), DUNNO),
        (Decision.yes(Reason.GRANT_DOMAIN), DUNNO),
        (Decision.no(Reason.SENDER_MISMATCH), REJECT_TEXT),
        (Decision.no(Reason.NULL_SENDER), REJECT_TEXT),
        (Decision.no(Reason.MALFORMED_SENDER), REJECT_TEXT),
        (Decision.defer(Reason.RATE_LIMIT, "messages-1h"), RATE_TEXT),
        (Decision.defer(Reason.DATABASE_UNAVAILABLE), DEFER_TEXT),
        (Decision.defer(Reason.OVERLOADED), DEFER_TEXT),
        (Decision.defer(Reason.RATELIMIT_UNAVAILABLE), DEFER_TEXT),
    ], ids=lambda v: v.text if isinstance(v, Decision) else "")
    def test_decision_maps_to_action(self, decision: Decision, action: str) -> None:
        """yes lets Postfix go on, no rejects with 5.7.1, defer is a temporary refusal."""
        assert policy_action(decision) == action

    @pytest.mark.parametrize("reason", list(Reason))
    def test_no_action_carries_the_reason_word(self, reason: Reason) -> None:
        """The text reaches the SMTP client: never the reason (account state) itself."""
        for decision in (Decision.no(reason), Decision.defer(reason)):
            action = policy_action(decision)
            assert action.split()[0] in {"REJECT", "DEFER_IF_PERMIT"}
            assert str(reason) not in action.lower()

    def test_reply_ends_with_an_empty_line(self) -> None:
        assert format_action(DUNNO) == b"action=DUNNO\n\n"
