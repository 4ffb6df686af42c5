"""`tessera bench`: measure model directories on this device, and the harness every script in
benchmarks/ runs on.

Layered on the runtime only (numpy + onnxruntime, never torch), so a `pip install`ed runtime can
measure its own variants. One job per module:

    protocol   the worker-process protocol: a measurement runs in a fresh process, JSON in and out
    memory     peak resident memory of the current process
    stats      per-token statistics and how rounds combine
    env        what a result records about the machine: versions, CPU, load average
    cache      the one cache key for exported model directories
    timing     timing of whole generations with per-token timestamps
    workers    the measurements `tessera bench` runs inside its workers
    quality    token agreement and teacher-forced logit error against a reference directory
    decoders   decoding settings timed in turn, quality sets with their call counts, the noise floor
    run        the orchestration of `tessera bench` (which worker, in what order)
    report     tables (text, markdown) and JSON from a run's results
    plot       an optional PNG (matplotlib, the `plot` extra)
"""
