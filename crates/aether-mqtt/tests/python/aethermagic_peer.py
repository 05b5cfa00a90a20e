"""A real Python AetherMagic 0.2.9 service for aether's interop tests.

    aethermagic_peer.py client HOST PORT UNION JOB TASK DATA_JSON
        Performs one task with AetherTask and reports every status and the completion.
    aethermagic_peer.py worker HOST PORT UNION JOB TASK
        Serves JOB/TASK with AetherTask: reports progress 50 with {"stage": "half"}, then
        completes with {"echo": data, "by": "python"}, or fails with {"reason": "asked to
        fail"} when data has "fail": true. Runs until killed.

Protocol lines go to stdout as `@@ {json}` (AetherMagic prints its own chatter there too).
The context is AetherTask's default, "x"; the workgroup is AetherTask's, "workgroup".
"""

import asyncio
import json
import sys

from aethermagic import AetherMagic, AetherTask


def emit(**event):
    print("@@ " + json.dumps(event), flush=True)


async def client(magic, job, task, data):
    done = asyncio.Event()

    async def on_status(ae_task, complete, succeed, progress, data):
        emit(event="status", complete=complete, succeed=succeed, progress=progress, data=data)

    async def on_complete(ae_task, succeed, data):
        emit(event="complete", succeed=succeed, data=data)
        done.set()

    t = AetherTask(job, task, on_status=on_status, on_complete=on_complete)
    tid = await t.perform(data)
    emit(event="performed", tid=tid)
    await asyncio.wait_for(done.wait(), timeout=30)
    # Let the status callback of the completion run before exiting.
    await asyncio.sleep(0.2)


async def worker(magic, job, task):
    async def on_perform(ae_task, data):
        emit(event="perform", tid=await ae_task.tid(), data=data)
        await ae_task.status(50, {"stage": "half"})
        if isinstance(data, dict) and data.get("fail"):
            await ae_task.complete(False, {"reason": "asked to fail"})
        else:
            await ae_task.complete(True, {"echo": data, "by": "python"})

    t = AetherTask(job, task, on_perform=on_perform)
    await t.idle()
    emit(event="idle")
    await asyncio.Event().wait()


async def main(argv):
    mode, host, port, union, job, task = argv[:6]
    magic = AetherMagic(server=host, port=int(port), union=union)
    loop = asyncio.create_task(magic.main())
    try:
        if mode == "client":
            await client(magic, job, task, json.loads(argv[6]))
        elif mode == "worker":
            await worker(magic, job, task)
        else:
            raise SystemExit(f"unknown mode {mode}")
    finally:
        await magic.stop()
        loop.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
