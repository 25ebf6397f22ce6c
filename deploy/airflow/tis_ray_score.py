"""A ready Airflow 3 DAG: score a file of (image, caption) pairs on a Ray cluster every day.

Put this file in the DAGs folder of an Airflow whose workers have ``pip install
'tis-ray[airflow]'``, point the connection ``tis_ray`` at the Ray head's dashboard
(``airflow connections add tis_ray --conn-uri http://HEAD:8265``, or the environment
variable ``AIRFLOW_CONN_TIS_RAY=http://HEAD:8265``), and edit the settings below.
Input and output should be bucket URLs (s3://, gs://) that both the cluster and the
Airflow workers can read: the job writes there, the judging step reads the stats there.
"""

from tis_ray.airflow import score_dag

dag = score_dag(
    dag_id="tis_ray_score",
    input_path="s3://my-bucket/pairs/{{ ds }}.parquet",  # templated: the run's date
    output_path="s3://my-bucket/scored/{{ ds }}.parquet",
    model="openai/clip-vit-base-patch32",
    threshold=0.05,  # fail the run when more than 5 % of the rows could not be scored
    schedule="@daily",
    retry_errors=True,  # one more pass over rows that failed for a passing reason first
    score_args=["--device", "cuda"],
)
