// The console's words in English and Chinese; the Chinese terms are the seed console's.
const WORDS = {
  en: {
    "lang": "Language", "logout": "Log out", "nav.jobs": "Training jobs", "nav.create": "Create training job",
    "login.title": "Log in", "login.token": "API token",
    "login.help": "Paste an API token (trainmaster up writes the admin's to <data_dir>/auth/admin.token).",
    "login.submit": "Log in", "login.bad": "This token is not accepted",
    "create.title": "Create training job", "section.basic": "Basic information",
    "section.params": "Job parameters", "section.resources": "Resources", "section.more": "Subscription and saving",
    "billing": "Billing mode", "billing.value": "On demand",
    "name": "Name", "name.rule": "Letters, digits, '-' and '_', 1-64 characters; the version (V001, V002, ...) is given by the system.",
    "description": "Description", "algorithm": "Algorithm source",
    "source.preset": "Preset algorithm", "source.framework": "Framework", "source.custom": "Custom image",
    "preset": "Preset algorithm", "engine": "Engine", "engine_version": "Engine version",
    "code_dir": "Code directory", "boot_file": "Boot file", "image": "Image", "command": "Command",
    "command.help": "One argument a line.",
    "data": "Data", "data.paths": "Data storage location", "data.datasets": "Dataset",
    "data.path": "Path", "data.dataset": "Dataset", "data.version": "Version", "data.add": "Add",
    "parameters": "Run parameters", "param.name": "Parameter name", "param.value": "Value",
    "param.add": "Add parameter", "remove": "Remove",
    "output_path": "Output path", "log_path": "Log path", "pool": "Resource pool", "flavor": "Flavor",
    "node_count": "Node count", "topic": "Topic", "events": "Events",
    "save_as": "Save as template", "save_as.name": "Template name", "save_as.description": "Template description",
    "price": "Price", "per_hour": "per hour", "next": "Next", "back": "Back", "submit": "Submit",
    "plan.ok": "No problems found.", "plan.problems": "Problems to fix", "plan.checking": "Checking...",
    "confirm.title": "Confirm the specification", "confirm.price": "Price per hour",
    "confirm.balance": "Account balance", "confirm.version": "Version",
    "jobs.title": "Training jobs", "jobs.status": "Status", "jobs.all": "All", "jobs.search": "Search by name",
    "jobs.name": "Name", "jobs.version": "Version", "jobs.created": "Created", "jobs.updated": "Updated",
    "jobs.none": "No training jobs.", "jobs.prev": "Previous", "jobs.next": "Next", "jobs.page": "Page",
    "jobs.auto": "Auto-refresh",
    "job.history": "Status history", "job.placements": "Placements", "job.node": "Node", "job.agent": "Agent",
    "job.host": "Host", "job.failure": "Failure reason", "job.violations": "Violations", "job.billing": "Billing",
    "job.logs": "Logs", "job.follow": "Follow", "job.stop": "Stop", "job.spec": "Specification",
    "job.logsearch": "Search in the logs", "job.at": "Time", "job.change": "Change", "job.reason": "Reason",
    "job.pending": "Waiting for", "job.cost": "Cost", "job.duration": "Duration",
    "status.Initializing": "Initializing", "status.Pending": "Pending", "status.Scheduled": "Scheduled",
    "status.Running": "Running", "status.Stopping": "Stopping", "status.Succeeded": "Succeeded",
    "status.Failed": "Failed", "status.Stopped": "Stopped",
  },
  zh: {
    "lang": "语言", "logout": "退出", "nav.jobs": "训练作业", "nav.create": "创建训练作业",
    "login.title": "登录", "login.token": "API令牌",
    "login.help": "粘贴API令牌（trainmaster up 将管理员令牌写入 <data_dir>/auth/admin.token）。",
    "login.submit": "登录", "login.bad": "该令牌无效",
    "create.title": "创建训练作业", "section.basic": "基本信息", "section.params": "作业参数",
    "section.resources": "选择资源", "section.more": "订阅消息与保存作业参数",
    "billing": "计费模式", "billing.value": "按需计费",
    "name": "名称", "name.rule": "字母、数字、“-”和“_”，1～64个字符；版本（V001、V002……）由系统生成。",
    "description": "描述", "algorithm": "算法来源",
    "source.preset": "预置算法", "source.framework": "常用框架", "source.custom": "自定义",
    "preset": "预置算法", "engine": "AI引擎", "engine_version": "版本",
    "code_dir": "代码目录", "boot_file": "启动文件", "image": "镜像地址", "command": "运行命令",
    "command.help": "每行一个参数。",
    "data": "数据来源", "data.paths": "数据存储位置", "data.datasets": "数据集",
    "data.path": "路径", "data.dataset": "选择数据集", "data.version": "选择版本", "data.add": "增加",
    "parameters": "运行参数", "param.name": "参数名称", "param.value": "值", "param.add": "增加运行参数",
    "remove": "删除",
    "output_path": "训练输出位置", "log_path": "作业日志路径", "pool": "资源池", "flavor": "规格",
    "node_count": "计算节点个数", "topic": "主题名", "events": "事件列表",
    "save_as": "保存作业参数", "save_as.name": "作业参数名称", "save_as.description": "作业参数描述",
    "price": "价格", "per_hour": "每小时", "next": "下一步", "back": "上一步", "submit": "立即创建",
    "plan.ok": "未发现问题。", "plan.problems": "需要修改的问题", "plan.checking": "检查中……",
    "confirm.title": "规格确认", "confirm.price": "每小时价格", "confirm.balance": "账户余额",
    "confirm.version": "版本",
    "jobs.title": "训练作业", "jobs.status": "状态", "jobs.all": "全部", "jobs.search": "按名称搜索",
    "jobs.name": "名称", "jobs.version": "版本", "jobs.created": "创建时间", "jobs.updated": "更新时间",
    "jobs.none": "没有训练作业。", "jobs.prev": "上一页", "jobs.next": "下一页", "jobs.page": "页",
    "jobs.auto": "自动刷新",
    "job.history": "状态历史", "job.placements": "节点分布", "job.node": "节点", "job.agent": "代理",
    "job.host": "主机", "job.failure": "失败原因", "job.violations": "校验问题", "job.billing": "计费",
    "job.logs": "日志", "job.follow": "跟随", "job.stop": "停止", "job.spec": "规格",
    "job.logsearch": "在日志中搜索", "job.at": "时间", "job.change": "变化", "job.reason": "原因",
    "job.pending": "等待", "job.cost": "费用", "job.duration": "时长",
    "status.Initializing": "初始化", "status.Pending": "排队中", "status.Scheduled": "已调度",
    "status.Running": "运行中", "status.Stopping": "停止中", "status.Succeeded": "运行成功",
    "status.Failed": "运行失败", "status.Stopped": "已停止",
  },
};

let lang = sessionStorage.getItem("tm.lang") || (navigator.language.startsWith("zh") ? "zh" : "en");

export function t(key) {
  return (WORDS[lang] && WORDS[lang][key]) || WORDS.en[key] || key;
}

export function language() { return lang; }

export function setLanguage(next) {
  lang = WORDS[next] ? next : "en";
  sessionStorage.setItem("tm.lang", lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
}

// Fills every [data-i18n] element under root with its word.
export function translate(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
}
