"""A real single-node Kubernetes for tests and `make kube-up`: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kube-proxy and a kubelet built from the Go module proxy
(tools/kube/build.sh), containerd, runc and the CNI plugins from Debian, all in a network and mount
namespace of their own, so the host keeps its sysctls, iptables, /run and /var/lib.

    node = Node("e2e")                 # names, addresses, directories (layout.py)
    cluster = Cluster(node).up()       # the node Ready, the chart installed (cluster.py)
    cluster.kubectl.json("get", "pods", "-A")
    cluster.down()                     # nothing left behind (leftovers.py says what would be)

`python -m testing.kube up|down [NAME]` is what `make kube-up` / `make kube-down` run.
"""
