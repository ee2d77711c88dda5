/*
 * butane.c - Flatcar's etcd-member Butane config (see butane.h).
 *
 * The text follows Flatcar's cluster-discovery guide: etcd-wrapper started
 * by a drop-in that waits for coreos-metadata, which writes the machine's
 * addresses to /run/metadata/flatcar.
 */
#include "util/butane.h"

#include <assert.h>

/* Everything before the URL, then what follows it. */
static const char etcd_member_head[] =
    "variant: flatcar\n"
    "version: 1.0.0\n"
    "systemd:\n"
    "  units:\n"
    "    - name: etcd-member.service\n"
    "      enabled: true\n"
    "      dropins:\n"
    "        - name: 20-clct-etcd-member.conf\n"
    "          contents: |\n"
    "            [Unit]\n"
    "            Requires=coreos-metadata.service\n"
    "            After=coreos-metadata.service\n"
    "            [Service]\n"
    "            EnvironmentFile=/run/metadata/flatcar\n"
    "            ExecStart=\n"
    "            ExecStart=/usr/lib/coreos/etcd-wrapper $ETCD_OPTS \\\n"
    "              --listen-peer-urls=\"http://${COREOS_CUSTOM_PRIVATE_IPV4}:2380\" \\\n"
    "              --listen-client-urls=\"http://0.0.0.0:2379,http://0.0.0.0:4001\" \\\n"
    "              --initial-advertise-peer-urls=\"http://${COREOS_CUSTOM_PRIVATE_IPV4}:2380\" \\\n"
    "              --advertise-client-urls=\"http://${COREOS_CUSTOM_PRIVATE_IPV4}:2379,"
    "http://${COREOS_CUSTOM_PRIVATE_IPV4}:4001\" \\\n"
    "              --discovery=\"";
static const char etcd_member_tail[] = "\"\n";

void butane_put_etcd_member(buf_t *out, const char *discovery_url)
{
    assert(discovery_url != NULL);
    buf_append(out, etcd_member_head, sizeof etcd_member_head - 1);
    buf_puts(out, discovery_url);
    buf_append(out, etcd_member_tail, sizeof etcd_member_tail - 1);
}
