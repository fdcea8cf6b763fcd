// Documents shaped like the ones kubeadm writes, shared by the unit and differential tests.

enum Fixtures {
    static let kubeAPIServerManifest = """
        apiVersion: v1
        kind: Pod
        metadata:
          annotations:
            kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: 10.0.0.10:6443
          creationTimestamp: null
          labels:
            component: kube-apiserver
            tier: control-plane
          name: kube-apiserver
          namespace: kube-system
        spec:
          containers:
          - command:
            - kube-apiserver
            - --advertise-address=10.0.0.10
            - --allow-privileged=true
            - --authorization-mode=Node,RBAC
            - --client-ca-file=/etc/kubernetes/pki/ca.crt
            - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml   # kekd
            - --etcd-servers=https://127.0.0.1:2379
            - --service-cluster-ip-range=10.96.0.0/12
            image: registry.k8s.io/kube-apiserver:v1.30.2
            imagePullPolicy: IfNotPresent
            livenessProbe:
              failureThreshold: 8
              httpGet:
                host: 10.0.0.10
                path: /livez
                port: 6443
                scheme: HTTPS
            name: kube-apiserver
            resources:
              requests:
                cpu: 250m
            volumeMounts:
            - mountPath: /etc/ssl/certs
              name: ca-certs
              readOnly: true
            - mountPath: /etc/kubernetes/enc
              name: enc
              readOnly: true
            - mountPath: /var/run/kmsplugin
              name: kms
          hostNetwork: true
          priority: 2000001000
          priorityClassName: system-node-critical
          securityContext:
            seccompProfile:
              type: RuntimeDefault
          volumes:
          - hostPath:
              path: /etc/ssl/certs
              type: DirectoryOrCreate
            name: ca-certs
          - hostPath:
              path: /etc/kubernetes/enc
              type: DirectoryOrCreate
            name: enc
          - hostPath:
              path: /var/run/kmsplugin
              type: DirectoryOrCreate
            name: kms
        status: {}

        """

    static let encryptionConfiguration = """
        # kekd in front, identity last so existing plaintext still reads.
        apiVersion: apiserver.config.k8s.io/v1
        kind: EncryptionConfiguration
        resources:
          - resources:
              - secrets
              - configmaps
            providers:
              - kms:
                  apiVersion: v2
                  name: kekd
                  endpoint: unix:///var/run/kmsplugin/socket.sock
                  timeout: 3s
              - identity: {}

        """

    static let adminConf = """
        apiVersion: v1
        clusters:
        - cluster:
            certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUM=
            server: https://10.0.0.10:6443
          name: kubernetes
        contexts:
        - context:
            cluster: kubernetes
            user: kubernetes-admin
          name: kubernetes-admin@kubernetes
        current-context: kubernetes-admin@kubernetes
        kind: Config
        preferences: {}
        users:
        - name: kubernetes-admin
          user:
            client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSURJ
            client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlF

        """
}
