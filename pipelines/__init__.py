"""The Kubeflow pipeline of LightReasoner: its DAG, compile entry point and the compiled YAML."""
