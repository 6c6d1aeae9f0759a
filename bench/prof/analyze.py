#!/usr/bin/env python3
"""usage: analyze.py PREFIX  -- per-process CPU share and per-stage share from perf script."""
import sys, re, subprocess, collections
pre = sys.argv[1]
roles = {}
for line in open(pre + '.tasks'):
    head, tasks = line.split(':', 1)
    pid, cmd = head.split(' ', 1)
    role = ('child' if '__drover_child' in cmd else 'master' if 'drover-master' in cmd
            else 'bench' if 'drover-bench' in cmd else 'worker')
    for t in tasks.split():
        roles[t] = role
out = subprocess.run(['perf', 'script', '-i', pre + '.data', '-F', 'tid,ip,sym,dso'],
                     capture_output=True, text=True).stdout
CATS = [
    ('job', r'machine_prime|is_prime|kinds::prime|run_job'),
    ('decode', r'prost.*(decode|merge)|decode_varint|DecodeContext|::merge|copy_to_bytes|Decoder'),
    ('encode', r'prost.*encode|encoded_len|encode_raw|encode_varint|Encoder|encode_frame|write_frame'),
    ('state', r'drover_master::state'),
    ('store', r'drover_master::store|redb|committer'),
    ('tracing', r'tracing'),
    ('uuid/fmt', r'uuid|core::fmt|fmt::write|Display|to_string|parse'),
    ('alloc/copy', r'malloc|free|realloc|memcpy|memmove|memset|alloc::|_int_|cfree|__rust_alloc|__rust_dealloc|RawVec|drop_in_place'),
    ('hash', r'hash|Hash|SipHash|hashbrown'),
    ('wake-ups (futex/sched)', r'futex|schedule|wake_up|try_to_wake|__switch_to|finish_task_switch|pick_next|enqueue_task|dequeue_task|update_curr|park|unpark|Notify|Condvar|select_task_rq|ttwu'),
    ('syscall net', r'tcp_|skb|sock|inet|__sys_|ip_|net_|loopback|__dev_|napi|netif|sendmsg|recvmsg'),
    ('syscall pipe/fs', r'pipe_|vfs_|ksys_|fsnotify|rw_verify|__fdget'),
    ('syscall epoll', r'epoll|ep_'),
    ('syscall other', r'entry_SYSCALL|syscall|do_syscall|syscall_exit|exit_to_user|copy_user|_copy_|clear_user|rep_movs|srso|__x64|mutex_|_raw_spin|native_|rcu'),
    ('h2/hyper/tonic', r'h2::|hyper|tonic|http::|tower'),
    ('tokio runtime', r'tokio::'),
    ('engine', r'drover_worker'),
    ('master svc', r'drover_master'),
]
cre = [(n, re.compile(r)) for n, r in CATS]
tot = collections.Counter()
cat = collections.defaultdict(collections.Counter)
syms = collections.defaultdict(collections.Counter)
for line in out.splitlines():
    parts = line.split(None, 2)
    if len(parts) < 3: continue
    tid, _ip, rest = parts
    role = roles.get(tid)
    if not role: continue
    m = re.match(r'(.*)\s+\((.*)\)\s*$', rest)
    sym, dso = (m.group(1).strip(), m.group(2)) if m else (rest, '')
    tot[role] += 1
    c = 'other'
    for n, r in cre:
        if r.search(sym):
            c = n; break
    if c == 'other' and 'kernel' in dso: c = 'syscall other'
    cat[role][c] += 1
    syms[role][sym[:90]] += 1
all_ = sum(tot.values())
print(f'samples in drover processes: {all_}')
for role in ['bench', 'master', 'worker', 'child']:
    n = tot[role]
    if not n: continue
    print(f'\n## {role}: {n} samples, {100*n/all_:.1f}% of drover CPU')
    print('  ' + ', '.join(f'{c} {100*v/n:.0f}%' for c, v in cat[role].most_common()))
    for s, v in syms[role].most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 12):
        print(f'    {100*v/n:5.1f}%  {s}')
