#!/usr/bin/env python3
"""usage: hopstat.py PREFIX -- per-hop medians of apply round trips from perf trace."""
import re, sys, statistics
pre = sys.argv[1]
role = {}
for line in open(pre + '.tasks'):
    head, tasks = line.split(':', 1)
    r = ('child' if '__dr' in head else 'master' if 'drover-master' in head
         else 'bench' if 'drover-bench' in head else 'worker')
    for t in tasks.split(): role[t] = r
ev = []
pat = re.compile(r'^\s*([\d.]+) \(\s*[\d.]* ?m?s?\s*\): \S+?/(\d+) (\w+)\(fd: (\d+).*?= (-?\d+)')
for line in open(pre + '.trace'):
    m = pat.match(line)
    if not m: continue
    t, tid, sc, fd, ret = float(m[1]), m[2], m[3], int(m[4]), int(m[5])
    if ret <= 0 or tid not in role: continue
    if sc == 'write' and ret == 8: continue  # eventfd wake-ups
    ev.append((t, role[tid], sc, fd, ret))
ev.sort()
names = ['submit sent', 'master reads submit', 'master replies to submit', 'client has reply',
         'master writes assign', 'worker reads assign', 'worker writes to child pipe',
         'worker reads child pipe', 'worker writes results', 'master reads results',
         'master writes Get reply', 'client has result']
hops = {n: [] for n in names}
i = 0
while i < len(ev):
    t0, r, sc, fd, n = ev[i]
    if not (r == 'bench' and sc == 'writev'):
        i += 1; continue
    seq = [t0]; j = i + 1; client_fd = None
    def find(cond):
        global j
        while j < len(ev):
            e = ev[j]; j += 1
            if cond(e): return e
        return None
    e = find(lambda e: e[1] == 'master' and e[2] == 'recvfrom'); 
    if not e: break
    client_fd = e[3]; seq.append(e[0]); k = j
    steps = [lambda e: e[1] == 'master' and e[2] == 'writev' and e[3] == client_fd,
             lambda e: e[1] == 'bench' and e[2] == 'recvfrom']
    ok = True
    for s in steps:
        e = find(s)
        if not e: ok = False; break
        seq.append(e[0])
    j = k
    for s in [lambda e: e[1] == 'master' and e[2] == 'writev' and e[3] != client_fd,
              lambda e: e[1] == 'worker' and e[2] == 'recvfrom',
              lambda e: e[1] == 'worker' and e[2] == 'write',
              lambda e: e[1] == 'worker' and e[2] == 'read',
              lambda e: e[1] == 'worker' and e[2] == 'writev',
              lambda e: e[1] == 'master' and e[2] == 'recvfrom' and e[3] != client_fd,
              lambda e: e[1] == 'master' and e[2] == 'writev' and e[3] == client_fd,
              lambda e: e[1] == 'bench' and e[2] == 'recvfrom']:
        if not ok: break
        e = find(s)
        if not e: ok = False; break
        seq.append(e[0])
    if ok and len(seq) == 12 and seq[-1] - seq[0] < 5:
        for a, n in enumerate(names): hops[n].append((seq[a] - seq[0]) * 1000)
    # next round trip: after the client read the result
    i = j if ok else i + 1
print(f'round trips: {len(hops[names[0]])}')
prev = 0
for n in names:
    if hops[n]:
        m = statistics.median(hops[n]); print(f'  {m:7.0f} us  (+{m - prev:5.0f})  {n}'); prev = m
