"""The runtime programs: what a layer call evaluates (the lowered data of each backend, the
DSL evaluator). The compilers build them; the emitters and backends use them; they import
nothing from the compilers, so the arrows run one way."""
