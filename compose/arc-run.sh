#!/bin/sh
# /home/runner/run.sh in this image: the command the gha-runner-scale-set chart gives an
# actions-runner-controller pod's `runner` container by default. Here it is the
# supervisor, as PID 1: with ACTIONS_RUNNER_INPUT_JITCONFIG (from ARC) and no token, it
# runs that one runner and exits as ARC reads it (compose/arc-values.yaml).
exec /usr/local/bin/supervisor run "$@"
