"""What signed work costs: µs to sign one task on the controller and to verify it on an agent.

Side by side in the same run with the baseline every task already paid before signing: the
plain `json.dumps` of the same request (what Celery's JSON serializer does with it), and
the JSON parse plus `TraceRequest` validation an agent does either way. Verification is
shown without and with the replay check (which writes and fsyncs the agent's seen-runs file).

    .venv/bin/python bench/signing.py [--n 5000] [--json]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _main
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node_agent.protocol import TraceRequest
from node_agent.signing import public_line, sign, verify
from node_agent.trust import Gate, SeenRuns, TrustedKeys

HOST = "web-1"


def request(run_id: str) -> dict[str, Any]:
    """A typical catalog request (the custom program's source would make every figure larger)."""
    return TraceRequest(
        run_id=run_id,
        job_id=str(uuid.uuid4()),
        program="runqlat",
        params={"per": "cgroup"},
        scope={"cgroup": "system.slice/nginx.service"},  # type: ignore[arg-type]
        duration_s=30,
        interval_s=1,
    ).model_dump(mode="json")


def timed(n: int, make: Callable[[int], Any], act: Callable[[Any], object]) -> list[float]:
    """µs per call of act(make(i)), make's cost left out."""
    samples = []
    for i in range(n):
        item = make(i)
        started = time.perf_counter_ns()
        act(item)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def main() -> int:
    parser = _main.options(__doc__)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    keys = dict([public_line(key.public_key()).split()])
    trusted = {kid: key.public_key() for kid in keys}
    ids = [str(uuid.uuid4()) for _ in range(args.n)]
    requests = [request(r) for r in ids]
    envelopes = [
        json.loads(
            json.dumps(
                sign(key, host=HOST, run_id=r, action="run", payload=q, ttl_s=60).model_dump(
                    mode="json"
                )
            )
        )
        for r, q in zip(ids, requests, strict=True)
    ]
    plain = [json.dumps(q) for q in requests]
    with tempfile.TemporaryDirectory() as tmp:
        keys_file = Path(tmp) / "controller-keys.pub"
        keys_file.write_text(public_line(key.public_key()) + "\n")
        gate = Gate(
            host=HOST,
            keys=TrustedKeys(keys_file),
            seen=SeenRuns(Path(tmp) / "seen.json"),
            skew_s=30,
        )
        rows = {
            "baseline: json.dumps(request)": timed(args.n, lambda i: requests[i], json.dumps),
            "sign (controller)": timed(
                args.n,
                lambda i: (ids[i], requests[i]),
                lambda a: sign(
                    key, host=HOST, run_id=a[0], action="run", payload=a[1], ttl_s=60
                ).model_dump(mode="json"),
            ),
            "baseline: json.loads + TraceRequest": timed(
                args.n, lambda i: plain[i], lambda s: TraceRequest.model_validate(json.loads(s))
            ),
            "verify (agent)": timed(
                args.n,
                lambda i: envelopes[i],
                lambda e: verify(e, keys=trusted, host=HOST, action="run", skew_s=30),
            ),
            "verify + replay record (agent)": timed(args.n, lambda i: envelopes[i], gate.admit_run),
        }
    medians = {name: statistics.median(s) for name, s in rows.items()}
    size_plain = statistics.median(len(p) for p in plain)
    size_signed = statistics.median(len(json.dumps(e)) for e in envelopes)
    if args.json:
        json.dump(
            {"n": args.n, "median_us": medians, "bytes": [size_plain, size_signed]},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    out = sys.stdout.write
    out(f"signing one task, median of {args.n} (µs)\n")
    out(f"{'':<36} {'median':>9} {'p90':>9}\n")
    for name, samples in rows.items():
        p90 = statistics.quantiles(samples, n=10)[-1]
        out(f"{name:<36} {medians[name]:>9.1f} {p90:>9.1f}\n")
    sign_ratio = medians["sign (controller)"] / medians["baseline: json.dumps(request)"]
    verify_ratio = medians["verify (agent)"] / medians["baseline: json.loads + TraceRequest"]
    out(f"sign / json.dumps: {sign_ratio:.1f}x; verify / parse+validate: {verify_ratio:.1f}x\n")
    out(f"task size: {size_plain:.0f} B plain, {size_signed:.0f} B signed\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
