"""job-intake: the edge.  ``setup`` opens the stores and registries, builds each part and
answers every subject with its handler (services/job_intake/README.md lists them)."""

from __future__ import annotations

import gc

from nats.js.kv import KeyValue

from services.job_intake.accept import Intake
from services.job_intake.audit_trail import AuditTrail
from services.job_intake.billing import Biller
from services.job_intake.datasets import Datasets
from services.job_intake.follow import JobFeeds
from services.job_intake.index import JobIndex
from services.job_intake.job_api import JobApi
from services.job_intake.plans import JobPlans
from services.job_intake.pull import each_message, pull_batches
from services.job_intake.registry import Accounts, Algorithms, Engines, Pools, Templates
from services.job_intake.replies import answer
from services.job_intake.submissions import Submissions
from services.job_intake.users import Users, load_users_signer
from services.job_intake.versions import VersionCounter
from trainmaster import accounts
from trainmaster.algorithms import load_presets
from trainmaster.catalog import load_engines, load_resources
from trainmaster.delivery_policy import Settler
from trainmaster.identity import Directory
from trainmaster.jobfeed import Pace
from trainmaster.jobstore import JobStore
from trainmaster.pubacks import PubAcks
from trainmaster.service import ServiceContext
from trainmaster.storage import Storage

# submission batches accepted at once: one fetched while others wait on the server's answers
SUBMIT_BATCHES_IN_FLIGHT = 2


# collect young cyclic garbage after this many allocations, not CPython's 700: accepting a job
# allocates hundreds of short-lived objects (freed by their reference counts, none cyclic), and the
# collections they set off cost intake a fifth of its CPU per job (docs/benchmarks.md)
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer cyclic collections, and none over what start-up loaded (the job index, the settings,
    the modules): it stays for the life of the process."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def setup(ctx: ServiceContext) -> None:
    s, topo, broker = ctx.settings, ctx.topo, ctx.broker
    max_bytes = s.api.max_request_bytes

    async def bucket(name: str) -> KeyValue:  # provisioning made every bucket
        return await broker.key_value(name, declare=False)

    directory = await Directory(await bucket(topo.bucket_users.name)).start()  # who asks, and their roles
    ctx.background(directory.follow(), "users")
    store = await JobStore(broker, topo, source="job-intake").open()
    index = JobIndex(store.kv)  # type: ignore[arg-type]
    await index.start()
    ctx.background(index.follow(), "job-index")
    accounts_kv = await bucket(topo.bucket_accounts.name)
    await accounts.ensure(accounts_kv, s.billing.default_account, s.billing.default_account_balance, s.billing.currency)
    resources = load_resources(s.catalog.catalog_dir)

    pubacks = await PubAcks(broker.config.connection_state.connection).start()  # many writes at once
    versions = VersionCounter(await bucket(topo.bucket_job_names.name), pubacks)
    templates = Templates(await bucket(topo.bucket_templates.name), max_bytes, directory)
    intake = Intake(broker=broker, topo=topo, settings=s, store=store, versions=versions, index=index,
                    templates=templates, requests=await bucket(topo.bucket_requests.name), directory=directory)
    trail = AuditTrail(broker=broker, js=ctx.js, topo=topo, store=store, directory=directory, max_bytes=max_bytes)
    audited = trail.audited
    plans = JobPlans(broker=broker, settings=s, check_subject=topo.validator_check, resources=resources,
                     accounts_kv=accounts_kv, versions=versions, index=index, store=store, intake=intake,
                     directory=directory)
    jobs = JobApi(broker=broker, topo=topo, store=store, index=index, directory=directory, max_bytes=max_bytes)
    accounts_api = Accounts(accounts_kv, max_bytes, s.billing.currency, index, resources, directory)
    algorithms = Algorithms(load_presets(s.catalog.catalog_dir), max_bytes, directory)
    pools = Pools(resources, s.billing.currency, max_bytes, directory)
    engines = Engines(load_engines(s.catalog.catalog_dir), max_bytes, directory)
    datasets = Datasets(await bucket(topo.bucket_datasets.name), await bucket(topo.bucket_dataset_versions.name),
                        Storage(s), max_bytes, directory)
    biller = Biller(store, accounts_kv, resources, default_account=s.billing.default_account,
                    currency=s.billing.currency)

    feeds = JobFeeds(nc=broker.config.connection_state.connection, js=ctx.js, topo=topo, store=store,
                     directory=directory, max_bytes=max_bytes,
                     pace=Pace(window_s=s.intake.follow_window_s, keepalive_s=s.intake.follow_keepalive_s))
    await feeds.start()  # tm.jobs.events, tm.jobs.logs: streamed replies, a task each
    ctx.on_stop.append(feeds.stop)

    # tm.jobs.submit: a plain pull loop, a batch at a time (submissions.py)
    submissions = Submissions(ctx.js, intake, pubacks, batch_size=topo.consumer_intake_submit.batch_size,
                              batches_in_flight=SUBMIT_BATCHES_IN_FLIGHT,
                              tracing=s.observability.otel_exporter != "none")
    ctx.background(submissions.run(), topo.consumer_intake_submit.durable)
    tune_gc()
    billing = topo.consumer_billing
    ctx.background(pull_batches(ctx.js, billing, each_message(Settler.for_js(ctx.js, topo, billing), biller.on_event),
                                batch_size=billing.batch_size), billing.durable)
    answer(broker, {
        topo.jobs("create"): audited("job_create", intake.on_create, trail.describe_create),
        topo.jobs("get"): jobs.on_get,
        topo.jobs("list"): jobs.on_list,
        topo.jobs("stop"): audited("job_stop", jobs.on_stop, trail.describe_stop),
        topo.jobs("plan"): plans.on_plan,
        topo.jobs("new_version"): plans.on_new_version,
        topo.templates("list"): templates.on_list,
        topo.templates("get"): templates.on_get,
        topo.templates("save"): templates.on_save,
        topo.templates("update"): templates.on_update,
        topo.templates("delete"): audited("template_delete", templates.on_delete, trail.describe_named),
        topo.accounts("list"): accounts_api.on_list,
        topo.accounts("get"): accounts_api.on_get,
        topo.accounts("credit"): audited("account_credit", accounts_api.on_credit,
                                         trail.describe_account("amount", "credit_id", "note")),
        topo.accounts("quota"): audited("account_quota", accounts_api.on_quota,
                                        trail.describe_account("cpus", "gpus", "nodes", "jobs", "clear")),
        topo.algorithms("list"): algorithms.on_list,
        topo.algorithms("get"): algorithms.on_get,
        topo.pools_list: pools.on_list,
        topo.engines_list: engines.on_list,
        topo.datasets("create"): audited("dataset_create", datasets.on_create, trail.describe_dataset_create),
        topo.datasets("list"): datasets.on_list,
        topo.datasets("get"): datasets.on_get,
        topo.datasets("publish"): audited("dataset_publish", datasets.on_publish,
                                          trail.describe_dataset(datasets.project_of)),
        topo.datasets("version"): datasets.on_version,
        topo.audit_list: trail.on_list,
    })
    # people: users, roles, credentials (services/job_intake/users.py)
    users = Users(directory.kv, directory, load_users_signer(s.intake.users_signing_key_file), max_bytes)
    answer(broker, {
        topo.users("create"): audited("user_create", users.on_create, users.describe_project),
        topo.users("grant"): audited("user_grant", users.on_grant, users.describe_project),
        topo.users("issue"): audited("user_issue", users.on_issue, users.describe_credential),
        topo.users("revoke"): audited("user_revoke", users.on_revoke, users.describe_credential),
        topo.users("list"): users.on_list,
        topo.users("get"): users.on_get,
        topo.users("whoami"): users.on_whoami,
        topo.users("authenticate"): users.on_authenticate,
    })
