"""The blocking facade, notebook style: submit a few prompts and collect them as they finish.

    QUICKMJ_API_KEY=sk-... python examples/sync_script.py

Without QUICKMJ_API_KEY it runs against the embedded relay simulator. Works the same
inside Jupyter: Client runs its own event loop in a background thread.
"""

from __future__ import annotations

from _relay import sync_client

PROMPTS = ["a lighthouse at dusk", "a bowl of ramen, studio light", "a paper crane"]

with sync_client() as mj:
    submitted = [mj.imagine(p) for p in PROMPTS]  # blocking Job handles
    print("submitted:", [job.id for job in submitted])
    for task in mj.as_completed(submitted, timeout=1800):
        if task.is_success:
            print("done  ", task.id, mj.download(task, "out/"))
        else:
            print("failed", task.id, task.fail_reason)
