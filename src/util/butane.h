/*
 * butane.h - the Butane config of Flatcar's cluster-discovery guide, with
 * a discovery URL filled in.
 *
 * One text, two readers: the token page shows it (HTML-escaped, in a
 * <pre>) and `disco new --butane` prints it. Both must hand out the same
 * config, so it is written here once and each reader only frames it for
 * its medium.
 */
#ifndef DISCO_UTIL_BUTANE_H
#define DISCO_UTIL_BUTANE_H

#include "util/buf.h"

/*
 * Appends the config to `out`, from its first line ("variant: flatcar") to
 * the newline that ends its last (the --discovery flag), with
 * `discovery_url` as --discovery's value. The text is plain: escaping for
 * a medium (HTML) is the caller's, over the whole of it. The
 * COREOS_CUSTOM_* names are Afterburn's and depend on the platform, as the
 * guide says; the reader tells the user so. `discovery_url` must not be
 * NULL. Allocation failures set out's sticky error flag (util/buf.h).
 */
void butane_put_etcd_member(buf_t *out, const char *discovery_url);

#endif
