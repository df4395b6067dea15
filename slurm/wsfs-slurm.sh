# wsfs for Slurm: what the prolog, task-prolog and epilog share (sourced, POSIX sh).
#
# Settings come from /etc/wsfs/slurm.conf (WSFS_SLURM_CONF overrides the path), shell
# assignments, all optional:
#   WSFS_MOUNT=/mnt/wsfs               the mount (default: the one wsfs mount, else /mnt/wsfs)
#   WSFS_SLURM_WAIT=60                 seconds the prolog waits for the mount to answer
#   WSFS_SLURM_TEMPLATE=default        the template of every job's workspace ...
#   WSFS_SLURM_TEMPLATE_gpu=render     ... or of jobs in partition gpu (non-word characters as _);
#                                      a job's `--comment=wsfs:TEMPLATE` wins over both
#   WSFS_SLURM_LEASE=7d                the workspace's lease: a workspace whose epilog never
#                                      ran (node crash, slurmd killed) is crashed past it
# No Python starts: each script reads and writes the mount's files directly.

WSFS_SLURM_CONF=${WSFS_SLURM_CONF:-/etc/wsfs/slurm.conf}
# shellcheck disable=SC1090
[ -r "$WSFS_SLURM_CONF" ] && . "$WSFS_SLURM_CONF"
WSFS_SLURM_WAIT=${WSFS_SLURM_WAIT:-60}
WSFS_SLURM_TEMPLATE=${WSFS_SLURM_TEMPLATE:-default}
WSFS_SLURM_LEASE=${WSFS_SLURM_LEASE:-7d}

wsfs_log() {  # one line to stderr, which slurmd logs
    echo "wsfs-slurm: $*" >&2
}

wsfs_mount() {  # $WSFS_MOUNT, else the one wsfs mount this process sees, else /mnt/wsfs
    if [ -n "${WSFS_MOUNT:-}" ]; then echo "$WSFS_MOUNT"; return; fi
    found=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i+1) == "fuse.wsfs") print $5; break } }' \
        /proc/self/mountinfo 2>/dev/null | sort -u)
    if [ -n "$found" ] && [ "$(echo "$found" | wc -l)" -eq 1 ]; then
        printf '%b\n' "$(echo "$found" | sed 's/\\0\([0-7][0-7]\)/\\0\1/g')"
    else
        echo /mnt/wsfs
    fi
}

wsfs_field() {  # FIELD from `scontrol show job -o` output in $1
    printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

wsfs_job_id() {  # slurm-JOBID, or slurm-ARRAYJOBID_TASKID for a task of an array ($1: scontrol's view)
    array_job=${SLURM_ARRAY_JOB_ID:-}; array_task=${SLURM_ARRAY_TASK_ID:-}
    if [ -z "$array_job" ] && [ -n "${1:-}" ]; then  # the node's prolog and epilog get no array variables
        array_job=$(wsfs_field "$1" ArrayJobId); array_task=$(wsfs_field "$1" ArrayTaskId)
    fi
    case "$array_task" in
        ''|*[!0-9]*) echo "slurm-${SLURM_JOB_ID}" ;;
        *) echo "slurm-${array_job}_${array_task}" ;;
    esac
}

wsfs_quote() {  # a label value as .wsfs/control takes it: one token, percent-encoded where needed
    printf '%s' "$1" | tr '\n\t' '  ' | sed -e 's/%/%25/g' -e 's/ /%20/g' -e 's/=/%3D/g'
}
