#!/usr/bin/env python3
"""usage: thr.py BIN_DIR JOBS [bench args]: CPU us per job of each thread name of the
drover-master (from BIN_DIR only) that used the most committer CPU, plus its durable tiny figure."""
import subprocess, sys, time, os, json
bin_, jobs = sys.argv[1], int(sys.argv[2])
p = subprocess.Popen([f'{bin_}/drover-bench', '--bin-dir', bin_, '--json'] + sys.argv[3:],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
hz = os.sysconf('SC_CLK_TCK'); exe = os.path.realpath(f'{bin_}/drover-master').encode()
last = {}
while p.poll() is None:
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            c = open(f'/proc/{pid}/cmdline','rb').read().split(b'\0')[0]
        except OSError: continue
        if c != exe: continue
        try:
            for tid in os.listdir(f'/proc/{pid}/task'):
                st = open(f'/proc/{pid}/task/{tid}/stat').read()
                name = st[st.index('(')+1:st.rindex(')')]
                f = st.rsplit(')',1)[1].split()
                last[(pid,tid)] = (name, int(f[11]) + int(f[12]))
        except OSError: pass
    time.sleep(0.1)
out = json.loads(p.stdout.read() or b'{}')
per = {}
for (pid,tid),(name,t) in last.items():
    key = 'committer' if name.startswith('drover-committ') else ('tokio' if 'tokio' in name else 'other')
    per.setdefault(pid,{}).setdefault(key,0); per[pid][key]+=t
pid = max(per, key=lambda k: per[k].get('committer',0))
res = {k: round(v/hz*1e6/jobs,2) for k,v in sorted(per[pid].items())}
res['durable_tiny'] = out.get('durable_tiny_jobs_per_s'); res['tiny'] = out.get('tiny_jobs_per_s')
print(json.dumps(res))
