import csv,re,sys,collections
d=sys.argv[1]
rows=list(csv.reader(open(d+'/topk_sass.csv')))
hdr=rows[1]; data=rows[2:]
si=hdr.index('Warp Stall Sampling (All Samples)'); ii=hdr.index('Instructions Executed')
cols=[c for c in hdr if c.startswith('stall_') and 'Not Issued' not in c]; idx=[hdr.index(c) for c in cols]
base=int(data[0][0],16)
line=None; lines={}
for l in open(d+'/topk_lines.sass'):
    m=re.search(r'File "(.*?)", line (\d+)',l)
    if m: line=(m.group(1).split('/')[-1],int(m.group(2))); continue
    m=re.match(r'\s+/\*([0-9a-f]{4,5})\*/',l)
    if m: lines[int(m.group(1),16)]=line
tot=sum(int(r[si]) for r in data)
# runs of same source line (topk_expand.py lines only as anchors)
runs=[];cur=None
for r in data:
    a=int(r[0],16)-base; ln=lines.get(a)
    if ln and ln[0]=='topk_expand.py': cur=ln[1]
    s=int(r[si]); ie=int(r[ii]); st=[int(r[i] or 0) for i in idx]
    if runs and runs[-1][0]==cur: 
        runs[-1][2]+=s; runs[-1][3]+=ie; runs[-1][4]=a
        runs[-1][5]=[x+y for x,y in zip(runs[-1][5],st)]
    else: runs.append([cur,a,s,ie,a,st])
print('total',tot)
thr=int(sys.argv[2]) if len(sys.argv)>2 else 20
for r in runs:
    if r[2]>=thr:
        top=sorted(zip(cols,r[5]),key=lambda x:-x[1])[:3]
        print(f'{r[1]:05x}-{r[4]:05x} line {r[0]} samples {r[2]:5d} instr {r[3]:8d}', ' '.join(f'{c[6:]}={v}' for c,v in top))
