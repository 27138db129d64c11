#!/usr/bin/python
# -*- coding: utf-8 -*-
# dlrm-bench: poll an async job (as ansible.builtin.async_status does) and renew a lease file.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dlrm_launch_status
short_description: Poll the benchmark's async launch and renew its lease
description:
  - Touches O(lease) (creating it), then reports the async job O(jid) like
    M(ansible.builtin.async_status) does - C(finished), and the job's result once it has one.
  - C(dlrm-bench launch --lease FILE) stops its instances when the file is not renewed for its
    lease timeout, so a controller that is gone (Ctrl-C of ansible-playbook) leaves nothing running.
options:
  jid:
    description: The async job id (the C(ansible_job_id) of the task started with poll 0).
    type: str
    required: true
  lease:
    description: The lease file to renew (none - only poll).
    type: path
    required: false
  async_dir:
    description: Where the async wrapper writes job results (the shell plugin's async_dir).
    type: path
    default: ~/.ansible_async
author: dlrm-bench
"""

EXAMPLES = r"""
- name: Wait for the launch, renewing its lease
  dlrm_launch_status:
    jid: "{{ job.ansible_job_id }}"
    lease: /opt/dlrm-bench/runs/x/.lease
  register: status
  until: status.finished
  retries: 100
  delay: 5
"""

RETURN = r"""
finished:
  description: Whether the job has ended.
  type: bool
  returned: always
lease_renewed:
  description: The lease file that was touched.
  type: str
  returned: always
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def renew(path):
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        return False  # the run dir is gone: nothing to keep alive
    with open(path, "a"):
        pass
    os.utime(path, None)
    return True


def main():
    module = AnsibleModule(
        argument_spec={
            "jid": {"type": "str", "required": True},
            "lease": {"type": "path", "required": False},
            "async_dir": {"type": "path", "default": "~/.ansible_async"},
        },
        supports_check_mode=True,
    )
    jid, lease = module.params["jid"], module.params["lease"]
    if "/" in jid or jid in ("", ".", ".."):
        module.fail_json(msg="invalid job id %r" % jid, finished=True)
    renewed = renew(lease) if lease and not module.check_mode else False
    log_path = os.path.join(module.params["async_dir"], jid)
    if not os.path.exists(log_path):
        module.fail_json(msg="could not find job", ansible_job_id=jid, started=True,
                         finished=True)
    try:
        with open(log_path, encoding="utf-8") as handle:
            text = handle.read()
        data = json.loads(text)
    except (OSError, ValueError):
        # not written yet, or being written: still running
        module.exit_json(ansible_job_id=jid, started=True, finished=False,
                         lease_renewed=lease if renewed else "")
    if not isinstance(data, dict):
        module.fail_json(msg="job %s wrote no result object" % jid, finished=True)
    if "started" not in data:
        data["finished"] = True
        data["ansible_job_id"] = jid
    elif "finished" not in data:
        data["finished"] = False
    data["lease_renewed"] = lease if renewed else ""
    # the job's own result, as async_status prints it (exit_json would re-process it)
    print("\n" + json.dumps(data))
    raise SystemExit(0)


if __name__ == "__main__":
    main()
