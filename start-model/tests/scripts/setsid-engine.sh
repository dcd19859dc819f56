#!/bin/sh
# An engine whose server escapes start-model's process group (issue #14, adversarial suite):
# it runs the real server ($1 and the rest of the arguments: the stand-in and `serve MODEL
# --port ...`) in a new session with setsid(1), writes that server's pid to $ESCAPED_PID_FILE
# and waits. SIGTERM ends this shell; the escaped server would keep the port.
prog=$1
shift
/usr/bin/setsid "$prog" "$@" &
echo $! > "$ESCAPED_PID_FILE"
wait
