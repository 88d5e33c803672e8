/*
 * no_dump.node: one call, for a process while it holds the key server PIN:
 * the proxy's primary (proxy/acme/token-keys.ts), the key server and every
 * `keyedge key` (keyserver/cli/pin-guard.ts), through
 * keyserver/shared/no-dump.ts:
 *
 *   setNotDumpable() -> boolean
 *       prctl(PR_SET_DUMPABLE, 0), as ssh-agent and gpg-agent do (prctl(2)):
 *       no core dump, and the files of /proc/<pid> that expose the process
 *       (mem, environ, maps, fd, ...) belong to root, ptrace and
 *       /proc/<pid>/mem need CAP_SYS_PTRACE (ptrace(2), "Ptrace access mode
 *       checking"): a process of the same user, a worker among them, reads
 *       neither its memory nor its environment. execve(2) makes a process
 *       dumpable again: the proxy's workers are; the `keyedge key` children
 *       call this again before they read the PIN.
 *       False, and nothing done, where there is no prctl (not Linux).
 *
 * An addon of its own, not a call in the keyless bridge: the primary and the
 * key server never load the bridge (an OpenSSL provider they have no use for).
 */
#include <stdbool.h>

#include <node_api.h>

#ifdef __linux__
#include <sys/prctl.h>
#endif

static napi_value js_set_not_dumpable(napi_env env, napi_callback_info info)
{
    bool done = false;
    napi_value result;

    (void)info;
#ifdef __linux__
    done = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
#endif
    if (napi_get_boolean(env, done, &result) != napi_ok)
        return NULL;
    return result;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */)
{
    napi_property_descriptor props[] = {
        { "setNotDumpable", NULL, js_set_not_dumpable, NULL, NULL, NULL, napi_enumerable, NULL },
    };

    if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok)
        return NULL;
    return exports;
}
