#!/bin/sh
# An engine that writes one 64 MiB stderr line without a newline, then a last word, and exits 3
# (issue #14, adversarial suite): start-model must drain it without growing with it and quote
# the line's tail.
/usr/bin/head -c 67108864 /dev/zero | /usr/bin/tr '\0' 'x' >&2
printf 'THE-END\033[2J' >&2
exit 3
