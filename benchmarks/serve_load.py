"""Concurrent load on a running `asymtune serve`: one chat request alone, then N at once, through the official
`openai` client; prints one JSON line (seconds alone, seconds for all N, their ratio, the batches the server made).

    asymtune serve quickstart-b-only --output-dir runs/quickstart &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --model quickstart-b-only --concurrent 8
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from openai import OpenAI

QUESTIONS = ["Do I need a building permit to put up a fence?", "Who pays for the contractor's insurance?",
             "How long does a permit take?", "Can I build a shed without a permit?",
             "What does the building committee grant?", "Do I need an architect for a small extension?",
             "Can my neighbour object to my permit?", "What happens if I build without a permit?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    client = OpenAI(base_url=f"{args.url}/v1", api_key="unused", timeout=600)

    def ask(question: str) -> tuple[float, int]:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=args.model, max_tokens=args.max_tokens,
                                               messages=[{"role": "user", "content": question}])
        return time.perf_counter() - started, reply.usage.completion_tokens

    ask(QUESTIONS[0])  # warm-up
    alone, alone_tokens = ask(QUESTIONS[0])
    before = httpx.get(f"{args.url}/health").json()
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.concurrent)]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrent) as pool:
        each = list(pool.map(ask, questions))
    together = time.perf_counter() - started
    after = httpx.get(f"{args.url}/health").json()
    print(json.dumps({"model": args.model, "concurrent": args.concurrent, "max_tokens": args.max_tokens,
                      "one_request_s": round(alone, 3), "one_request_tokens": alone_tokens,
                      "all_concurrent_s": round(together, 3), "tokens": sum(t for _, t in each),
                      "ratio_to_one": round(together / alone, 2), "batches": after["batches"] - before["batches"],
                      "widest_batch": after["widest_batch"]}))


if __name__ == "__main__":
    main()
