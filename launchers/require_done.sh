# Source this file from scripts that launch training: `require_done RUN_DIR` fails (status 1, one line on stderr)
# unless the run in RUN_DIR reached its end. A run writes RUN_DIR/DONE only then (train.total_nimg reached, final
# checkpoint complete; ect_scale/runtime/rundir.py) and removes it when it starts. Check it after every `deepspeed`
# command: the deepspeed launcher exits with status 0 when its launch process is killed (SIGKILL), so its exit
# status alone does not tell a crash from a finished run (docs/troubleshooting.md, "Stopping a run").
require_done() {
  if [[ -f "$1/DONE" ]]; then
    return 0
  fi
  echo "error: the training run in $1 did not finish (no $1/DONE). Fix: see the output above and $1/logs/, then" \
       "re-run the same command to resume from the latest complete checkpoint" >&2
  return 1
}
