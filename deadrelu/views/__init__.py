"""Presentation of reports and results: the terminal (`terminal`), notebooks (`notebook`), the HTML
page (`html`), figures (`plots`) and TensorBoard summaries (`tensorboard`). Views read results; they
never compute statistics. A table is built once as a `table.Table` (the report's in `report_tables`)
and rendered by `table.to_rich`, `table.to_html` and `table.to_markdown`.
"""
