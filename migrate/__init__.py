"""`dlm-guard migrate`: the documented decentralized-live-migration orchestrator steps, guarded.

Modules, one job each: `plan` (pure: source state in, ordered objects out), `review` (the
plan through the webhook's own mutate+validate engine), `kube` (the only API access),
`gather` (reads what the plan and a resume need), `run` (the state machine), `progress`
(what the user sees), `cli` (the flags, light to import), `commands` (the commands).
"""
