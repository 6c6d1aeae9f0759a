#!/usr/bin/env python3
"""usage: cpu.py BIN_DIR JOBS_TOTAL [bench args]: microseconds of CPU (utime + stime,
read every 100 ms until each process exits) per job, summed per role: master, workers,
children. JOBS_TOTAL is every job the bench runs: warm-up 2,000 + runs x (--jobs + 20,000)."""
import subprocess, sys, time, os, json
bin_, total = sys.argv[1], int(sys.argv[2])
p = subprocess.Popen([f'{bin_}/drover-bench', '--bin-dir', bin_, '--json'] + sys.argv[3:],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
hz = os.sysconf('SC_CLK_TCK')
last = {}
def role(pid):
    try:
        cmd = open(f'/proc/{pid}/cmdline','rb').read().split(b'\0')
    except OSError: return None
    c = b' '.join(cmd)
    if b'__drover_child' in c: return 'child'
    if cmd[0].endswith(b'drover-master'): return 'master'
    if cmd[0].endswith(b'drover-worker'): return 'worker'
    return None
while p.poll() is None:
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        r = role(pid)
        if not r: continue
        try:
            f = open(f'/proc/{pid}/stat').read().rsplit(')',1)[1].split()
            last[pid] = (r, int(f[11]) + int(f[12]))
        except OSError: pass
    time.sleep(0.1)
out = json.loads(p.stdout.read() or b'{}')
agg = {}
for pid,(r,t) in last.items(): agg[r] = agg.get(r,0) + t
res = {r: round(t / hz * 1e6 / total, 2) for r,t in sorted(agg.items())}
res['all'] = round(sum(res.values()), 2)
res['tiny'] = out.get('tiny_jobs_per_s')
print(json.dumps(res))
